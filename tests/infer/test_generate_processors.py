"""generate() with transformers' logits processors (logits_rules.py) against transformers' own generate.

Every case also asserts that the rule changes the output of the same call without it, so that a rule
that is silently dropped fails here instead of matching transformers vacuously.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation import logits_process as lp

from neuron_infer import NeuronModelForCausalLM
from neuron_infer.generation_args import GenerationSettings
from neuron_infer.logits_rules import LogitsRules
from neuron_infer.sampling import SamplingParams

PROMPT = [1, 17, 33, 5, 90, 41, 7]
PROMPTS = [PROMPT, [1, 120, 3], [1, 9, 9, 14, 15, 26, 53, 58, 97, 93, 23]]


@pytest.fixture(scope="module")
def model(tiny_artifact) -> NeuronModelForCausalLM:
    return NeuronModelForCausalLM.from_pretrained(tiny_artifact)


@pytest.fixture(scope="module")
def on_device_model(tiny_checkpoint, tmp_path_factory) -> NeuronModelForCausalLM:
    from support.tiny import export_tiny

    root = export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("ods") / "tiny-ods-proc", batch_size=1,
                       sequence_length=32, max_context_length=16, context_buckets=[16], on_device_sampling=True,
                       max_topk=8, decode_batches=[])
    return NeuronModelForCausalLM.from_pretrained(root)


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    return ids, mask


def run(m, prompts: list[list[int]], seed: int = 0, **kwargs) -> list[list[int]]:
    """New tokens of `m.generate` (ours or transformers') on the left-padded prompts, global RNG seeded."""
    ids, mask = left_padded(prompts)
    torch.manual_seed(seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = m.generate(ids, attention_mask=mask, pad_token_id=0, **kwargs)
    return out[:, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def greedy(tiny_reference) -> list[int]:
    return run(tiny_reference, [PROMPT], max_new_tokens=12, do_sample=False, eos_token_id=None)[0]


class EvenTokensOnly(lp.LogitsProcessor):
    """A caller's processor: odd token ids never come out."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, 1::2] = float("-inf")
        return scores


# ---- greedy, token for token ----------------------------------------------------------------------
GREEDY = {
    "sequence_bias_one_token": lambda g: dict(sequence_bias={(g[0],): -20.0, (g[3],): -20.0}),
    "sequence_bias_pair": lambda g: dict(sequence_bias=[[[g[1], g[2]], -50.0]]),
    "forced_eos_token_id": lambda g: dict(forced_eos_token_id=5),
    # 150 is not in the greedy text: the growing penalty makes it come out.
    "exponential_decay_length_penalty": lambda g: dict(exponential_decay_length_penalty=(1, 1.5), eos_token_id=150),
    "logits_processor": lambda g: dict(logits_processor=lp.LogitsProcessorList([EvenTokensOnly()])),
    # transformers lets a caller's processor replace the one it would build: 3.0 replaces 1.1 here.
    "logits_processor_replaces_built": lambda g: dict(
        repetition_penalty=1.1, logits_processor=lp.LogitsProcessorList([lp.RepetitionPenaltyLogitsProcessor(3.0)])),
    "rules_and_caller_processor": lambda g: dict(
        no_repeat_ngram_size=2, bad_words_ids=[[g[0]]], min_new_tokens=6, suppress_tokens=[g[2]],
        eos_token_id=g[1], logits_processor=lp.LogitsProcessorList([EvenTokensOnly()])),
}


@pytest.mark.parametrize("case", GREEDY)
def test_greedy_rules_give_transformers_tokens(model, tiny_reference, greedy, case):
    kwargs = {"max_new_tokens": 12, "eos_token_id": None, "do_sample": False, **GREEDY[case](greedy)}
    got = run(model, [PROMPT], **kwargs)[0]
    assert got == run(tiny_reference, [PROMPT], **kwargs)[0]
    plain = {k: v for k, v in kwargs.items() if k in ("max_new_tokens", "eos_token_id", "do_sample")}
    assert got != run(model, [PROMPT], **plain)[0], f"{case} did not change greedy decoding; pick values that do"


def test_rules_on_a_padded_batch_in_two_chunks(model, tiny_reference, greedy):
    kwargs = dict(max_new_tokens=10, do_sample=False, eos_token_id=None, sequence_bias={(greedy[0],): -9.0},
                  repetition_penalty=1.6, logits_processor=lp.LogitsProcessorList([EvenTokensOnly()]))
    got = run(model, PROMPTS, **kwargs)
    assert got == run(tiny_reference, PROMPTS, **kwargs)
    assert all(t % 2 == 0 for row in got for t in row)


# ---- sampled, seeded: the same draws as transformers ----------------------------------------------
# The random model's next-token distributions are flat (160 tokens, the largest ~1.2%): the cutoffs must be
# high to remove tokens that the draws would otherwise pick.
SAMPLED = {
    "min_p": dict(min_p=0.7),
    "typical_p": dict(typical_p=0.4),
    "epsilon_cutoff": dict(epsilon_cutoff=0.05),
    "eta_cutoff": dict(eta_cutoff=0.9),
    "top_h": dict(top_h=0.5),
    "min_p_with_top_k_and_penalty": dict(min_p=0.7, top_k=5, repetition_penalty=1.5, renormalize_logits=True),
}


@pytest.mark.parametrize("case", SAMPLED)
def test_sampling_filters_draw_what_transformers_draws(model, tiny_reference, case):
    plain = dict(max_new_tokens=16, do_sample=True, temperature=1.0, top_k=0, eos_token_id=None)
    kwargs = {**plain, **SAMPLED[case]}
    got = run(model, [PROMPT], seed=5, **kwargs)[0]
    assert got == run(tiny_reference, [PROMPT], seed=5, **kwargs)[0]
    assert got != run(model, [PROMPT], seed=5, **plain)[0], f"{case} did not change this sample"


@pytest.mark.parametrize(("kwargs", "keep"), [
    (dict(min_p=0.7), lambda p: p >= 0.7 * p.max()),
    (dict(top_k=3, min_p=0.0), lambda p: p >= p.topk(3).values[-1]),
])
def test_min_p_and_top_k_restrict_the_support(model, tiny_reference, kwargs, keep):
    with torch.no_grad():
        probs = tiny_reference(torch.tensor([PROMPT])).logits[0, -1].float().softmax(-1)
    allowed = set(keep(probs).nonzero().view(-1).tolist())
    drawn = {run(model, [PROMPT], seed=s, max_new_tokens=1, do_sample=True, **kwargs)[0][0] for s in range(40)}
    assert drawn <= allowed
    assert len(allowed) >= 2 and len(drawn) >= 2, "the filter should leave a choice, and sampling should use it"
    unfiltered = {run(model, [PROMPT], seed=s, max_new_tokens=1, do_sample=True, top_k=0)[0][0] for s in range(40)}
    assert not unfiltered <= allowed, "without the filter the draws should leave the kept set"


# ---- scores, logits, return_dict_in_generate --------------------------------------------------------
@pytest.mark.parametrize("do_sample", [False, True])
def test_output_scores_and_logits_are_transformers(model, tiny_reference, do_sample):
    kwargs = dict(max_new_tokens=5, do_sample=do_sample, temperature=0.8, top_k=10, eos_token_id=None,
                  repetition_penalty=1.3, return_dict_in_generate=True, output_scores=True, output_logits=True)
    # Greedy: three rows, two chunks on the batch-2 artifact. Sampled: one chunk, because transformers draws
    # for all rows at once and the chunks draw one after the other.
    ids, mask = left_padded(PROMPTS if not do_sample else PROMPTS[:2])
    outs = []
    for m in (model, tiny_reference):
        torch.manual_seed(3)
        with torch.no_grad():
            outs.append(m.generate(ids, attention_mask=mask, pad_token_id=0, **kwargs))
    ours, theirs = outs
    assert torch.equal(ours.sequences, theirs.sequences)
    assert len(ours.scores) == len(theirs.scores) == len(ours.logits) == 5
    for a, b in zip(ours.logits, theirs.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(ours.scores, theirs.scores):
        assert torch.equal(a.isinf(), b.isinf())  # the same tokens filtered out
        torch.testing.assert_close(a[~a.isinf()], b[~b.isinf()], atol=1e-4, rtol=1e-4)


def test_renormalized_scores_are_log_probabilities(model):
    out = model.generate(torch.tensor([PROMPT]), max_new_tokens=3, renormalize_logits=True, output_scores=True,
                         return_dict_in_generate=True, eos_token_id=None)
    assert out.logits is None and len(out.scores) == 3
    torch.testing.assert_close(out.scores[0].exp().sum(-1), torch.ones(1))


def test_without_return_dict_generate_returns_the_ids(model):
    out = model.generate(torch.tensor([PROMPT]), max_new_tokens=3, output_scores=True, eos_token_id=None)
    assert isinstance(out, torch.Tensor) and out.shape == (1, len(PROMPT) + 3)


# ---- the list itself ---------------------------------------------------------------------------------
def test_the_list_is_built_in_transformers_order(tiny_reference):
    # A drift guard: transformers' private builder, with every rule we map on, must list the same classes.
    fields = dict(sequence_bias={(5,): -1.0}, repetition_penalty=1.2, no_repeat_ngram_size=2, bad_words_ids=[[9]],
                  min_length=3, forced_bos_token_id=1, forced_eos_token_id=2, remove_invalid_values=True,
                  exponential_decay_length_penalty=(2, 1.1), suppress_tokens=[4], begin_suppress_tokens=[6],
                  do_sample=True, temperature=0.7, top_h=0.5, top_k=5, top_p=0.9, min_p=0.1, typical_p=0.8,
                  epsilon_cutoff=0.01, eta_cutoff=0.01, renormalize_logits=True, eos_token_id=2, max_length=20)
    config = GenerationConfig(**fields)
    config._eos_token_tensor = torch.tensor([2])
    theirs = tiny_reference._get_logits_processor(config, input_ids_seq_length=7, logits_processor=[EvenTokensOnly()])
    settings = GenerationSettings.resolve(config, {}, prompt_len=7, logits_processor=[EvenTokensOnly()])
    ours = settings.rules.build(7, settings.eos_token_ids, settings.sampling, max_length=20)
    assert [type(p).__name__ for p in ours] == [type(p).__name__ for p in theirs]


def test_no_rule_keeps_the_fast_path():
    assert LogitsRules().build(7, (2,), SamplingParams(do_sample=True, temperature=0.7, top_k=5)) is None
    assert LogitsRules(min_p=0.1).build(7, (2,), SamplingParams(do_sample=False)) is None  # greedy ignores min_p


# ---- refusals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(do_sample=True, min_p=0.1), dict(sequence_bias={(5,): 1.0}), dict(output_scores=True),
    dict(logits_processor=lp.LogitsProcessorList([EvenTokensOnly()])), dict(do_sample=True, typical_p=0.5),
    dict(renormalize_logits=True),
], ids=lambda k: next(n for n in k if n != "do_sample"))
def test_on_device_sampling_refuses_processors_by_name(on_device_model, kwargs):
    name = next(n for n in kwargs if n != "do_sample")
    with pytest.raises(ValueError, match=rf"{name}=.* needs the logits on the host.*re-export it without "
                                         r"--on-device-sampling"):
        on_device_model.generate(torch.tensor([PROMPT]), max_new_tokens=4, **kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(do_sample=True, min_p=1.5), r"generate\(\): .*min_p.*1\.5"),
    (dict(sequence_bias={(500,): 1.0}), r"sequence_bias names token 500"),
    (dict(sequence_bias={(5,): "x"}), r"'sequence_bias' = .* is not a dict"),
    (dict(forced_eos_token_id=999), r"forced_eos_token_id names token 999"),
])
def test_bad_rule_values_are_refused_by_name(model, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=4, **kwargs)


def test_on_device_sampling_artifact_picks_the_first_token_of_a_chunked_prompt_on_the_host(on_device_model,
                                                                                           tiny_reference):
    """Chunk graphs return logits even where the other graphs sample: the first token is picked on the host, the
    rest on the device; greedy, so both must follow transformers."""
    prompt = [1, *[(5 * i + 2) % 150 + 3 for i in range(19)]]  # 20 tokens: over the one bucket (16)
    assert run(on_device_model, [prompt], max_new_tokens=6, eos_token_id=None) == \
        run(tiny_reference, [prompt], max_new_tokens=6, min_new_tokens=6, eos_token_id=None)
