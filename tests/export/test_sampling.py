"""On-device sampling (export with on_device_sampling=True): the graphs return tokens, not logits.

The rule the sampler documents (neuron_export/models/sampling.py), per row, with (top_k, top_p,
temperature) and a uniform `rand` from the host: divide the logits by the temperature, keep the top_k,
softmax, keep the smallest most-likely-first prefix whose mass reaches top_p (the first token always
stays), renormalise, and return the first token whose cumulative probability exceeds `rand`.

The expected token is computed here from *transformers'* logits with an independent float64
implementation of that rule, whose kept set is itself checked against transformers' own
Temperature/TopK/TopP logits warpers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import pytest
import torch
from export_testlib import BATCH, export_tiny, greedy_reference, open_runtime, prompt_ids, reset_kv

from neuron_infer.runtime import DecoderRuntime

MAX_TOPK = 64  # below the vocabulary (151): the graph's top-k is a real cut
# (top_k, top_p, temperature); top-k binding, top-p binding, both, and a hot temperature
PARAMS = [(5, 1.0, 1.0), (MAX_TOPK, 0.7, 1.0), (24, 0.85, 0.6), (MAX_TOPK, 0.5, 1.7), (40, 0.95, 0.8)]
STATES = 4  # prefill, then 3 decode steps: where the sampler is checked


@dataclass
class Sampled:
    artifact: DecoderRuntime
    hf: torch.nn.Module
    prompts: dict[int, list[int]]  # slot -> prompt


@pytest.fixture(scope="module")
def sampled(tiny_llama_dir: Path, tmp_path_factory) -> Sampled:
    from transformers import AutoModelForCausalLM

    root = export_tiny(tiny_llama_dir, tmp_path_factory.mktemp("sampling") / "artifact", on_device_sampling=True,
                       max_topk=MAX_TOPK)
    art = open_runtime(root)
    assert art.config.on_device_sampling and art.config.max_topk == MAX_TOPK
    # Every graph samples, but chunked prefill: it returns the logits of every chunk position (prompt logprobs)
    assert all(o.name == "tokens" for g in art.config.graphs.values() if g.role != "chunked_prefill" for o in g.outputs)
    assert all(g.outputs[0].name == "logits" for g in art.config.graphs_by_role("chunked_prefill").values())
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager", dtype=torch.float32).eval()
    vocab = hf.config.vocab_size
    return Sampled(artifact=art, hf=hf, prompts={0: prompt_ids(12, vocab, seed=1), 1: prompt_ids(21, vocab, seed=2)})


# ---- the reference ---------------------------------------------------------------------------------------


def kept_distribution(logits: torch.Tensor, top_k: int, top_p: float, temperature: float) -> list[tuple[int, float]]:
    """temperature -> top-k -> top-p in float64: the kept tokens, most likely first, with renormalised probabilities."""
    values, order = logits.double().sort(descending=True)
    probs = torch.softmax(values[:top_k] / temperature, dim=0).tolist()
    kept: list[tuple[int, float]] = []
    mass = 0.0
    for token, p in zip(order[:top_k].tolist(), probs):
        if kept and mass >= top_p:
            break
        kept.append((token, p))
        mass += p
    return [(token, p / mass) for token, p in kept]


def inverse_cdf(kept: list[tuple[int, float]], rand: float) -> int:
    cumulative = 0.0
    for token, p in kept:
        cumulative += p
        if rand < cumulative:
            return token
    return kept[-1][0]


def probe_rands(kept: list[tuple[int, float]]) -> list[float]:
    """The middle of the CDF interval of the first 6 and last 3 kept tokens (each at least 1e-4 wide, far from
    any boundary that float32 rounding could move), and 0."""
    bounds = [0.0, *accumulate(p for _, p in kept)]
    picks = sorted(set(range(min(6, len(kept)))) | set(range(max(0, len(kept) - 3), len(kept))))
    return [0.0] + [(bounds[i] + bounds[i + 1]) / 2 for i in picks if bounds[i + 1] - bounds[i] > 1e-4]


# ---- what the graphs sample ------------------------------------------------------------------------------


@dataclass
class Draw:
    state: int
    row: int
    logits: torch.Tensor  # transformers' logits for this row and state
    params: tuple[int, float, float]
    rand: float
    token: int  # what the graph returned


@pytest.fixture(scope="module")
def draws(sampled: Sampled) -> list[Draw]:
    """Graph samples at every state for every (params, rand) probe; rows 0 and 1 use different params in the
    same call. States advance teacher-forced on transformers' greedy continuation; re-running a graph at the
    same state rewrites the same KV entries, so many probes can share one state."""
    art = sampled.artifact
    refs = {slot: greedy_reference(sampled.hf, p, STATES - 1) for slot, p in sampled.prompts.items()}
    reset_kv(art)
    out: list[Draw] = []
    for state in range(STATES):
        for i, params in enumerate(PARAMS):
            row_params = {0: params, 1: PARAMS[(i + 1) % len(PARAMS)]}
            row_rands = {r: probe_rands(kept_distribution(refs[r][1][state], *row_params[r])) for r in (0, 1)}
            for j in range(max(len(v) for v in row_rands.values())):
                rand = {r: row_rands[r][min(j, len(row_rands[r]) - 1)] for r in (0, 1)}
                if state == 0:
                    tokens = {r: int(art.prefill(torch.tensor(sampled.prompts[r]), r, torch.tensor(row_params[r]),
                                                 torch.tensor([rand[r]]))) for r in (0, 1)}
                else:
                    sampling = torch.tensor([row_params[0], row_params[1]], dtype=torch.float32)
                    got = art.decode(torch.tensor([refs[r][0][state - 1] for r in (0, 1)]),
                                     torch.tensor([len(sampled.prompts[r]) + state - 1 for r in (0, 1)]), sampling,
                                     torch.tensor([rand[0], rand[1]], dtype=torch.float32))
                    tokens = {r: int(got[r]) for r in (0, 1)}
                out += [Draw(state, r, refs[r][1][state], row_params[r], rand[r], tokens[r]) for r in (0, 1)]
    return out


# ---- tests -----------------------------------------------------------------------------------------------


def test_top_k_1_is_transformers_argmax(sampled: Sampled):
    """Greedy (top_k=1) whatever top_p, temperature and rand say; prefill and 16 decode steps, two slots."""
    art, steps = sampled.artifact, 16
    refs = {slot: greedy_reference(sampled.hf, p, steps) for slot, p in sampled.prompts.items()}
    greedy = {0: (1.0, 0.3, 0.7), 1: (1.0, 1.0, 1.0)}
    gen = torch.Generator().manual_seed(0)
    reset_kv(art)
    for slot, prompt in sampled.prompts.items():
        token = art.prefill(torch.tensor(prompt), slot, torch.tensor(greedy[slot]), torch.rand(1, generator=gen))
        assert int(token) == refs[slot][0][0], f"slot {slot} prefill"
    for step in range(steps):
        tokens = art.decode(torch.tensor([refs[r][0][step] for r in range(BATCH)]),
                            torch.tensor([len(sampled.prompts[r]) + step for r in range(BATCH)]),
                            torch.tensor([greedy[0], greedy[1]]), torch.rand(BATCH, generator=gen))
        assert tokens.tolist() == [refs[r][0][step + 1] for r in range(BATCH)], f"decode step {step + 1}"


def test_sampled_token_follows_inverse_cdf_rule(draws: list[Draw]):
    wrong = [d for d in draws if d.token != inverse_cdf(kept_distribution(d.logits, *d.params), d.rand)]
    assert not wrong, f"{len(wrong)}/{len(draws)} draws differ, first: " + ", ".join(
        f"state {d.state} row {d.row} params {d.params} rand {d.rand:.4f}: got {d.token}, expected "
        f"{inverse_cdf(kept_distribution(d.logits, *d.params), d.rand)}" for d in wrong[:3])


def test_probes_reach_many_tokens_and_binding_cuts(draws: list[Draw]):
    """The probes are strong enough to catch a wrong rule: many distinct tokens come out, and top-p cuts below
    top_k in every top_p < 1 case."""
    assert len({(d.row, d.token) for d in draws}) > 40
    for d in draws:
        kept = kept_distribution(d.logits, *d.params)
        top_k, top_p, _ = d.params
        assert len(kept) > 1
        if top_p < 1.0:
            assert len(kept) < top_k, f"top_p {top_p} keeps all {top_k} tokens"


def test_reference_kept_set_matches_transformers_warpers(draws: list[Draw]):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    seen = set()
    for d in draws:
        key = (d.state, d.row, d.params)
        if key in seen:
            continue
        seen.add(key)
        top_k, top_p, temperature = d.params
        scores = d.logits.double().view(1, -1)
        for warper in (TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)):
            scores = warper(None, scores)
        expected = {i for i, s in enumerate(scores[0].tolist()) if not math.isinf(s)}
        assert {t for t, _ in kept_distribution(d.logits, *d.params)} == expected, key


@pytest.mark.parametrize("wrong_rule", ["no temperature", "top-p before top-k", "cdf from the least likely"])
def test_sanity_a_wrong_rule_disagrees(draws: list[Draw], wrong_rule: str):
    def predict(d: Draw) -> int:
        top_k, top_p, temperature = d.params
        if wrong_rule == "no temperature":
            return inverse_cdf(kept_distribution(d.logits, top_k, top_p, 1.0), d.rand)
        if wrong_rule == "top-p before top-k":
            full = kept_distribution(d.logits, d.logits.numel(), top_p, temperature)[:top_k]
            mass = sum(p for _, p in full)
            return inverse_cdf([(t, p / mass) for t, p in full], d.rand)
        return inverse_cdf(kept_distribution(d.logits, *d.params)[::-1], d.rand)

    assert any(d.token != predict(d) for d in draws)
