"""NeuronModelRunner with vLLM's chunked-prefill scheduling and prefix caching, driven step by step with vLLM's
own SchedulerOutput dataclasses (test_runner_paths.Driver). The tiny SmolLM2-vocabulary artifact has batch 2,
sequence_length 64, prompt buckets up to 32 and chunked-prefill graphs. Greedy tokens are compared with
transformers' greedy continuation: a chunk encoded at the wrong offset, a prefix reused from the wrong rows, or
rows clobbered by a decode step would change them."""

from __future__ import annotations

import random

import pytest
import torch
from test_runner_paths import Driver, greedy
from test_runner_paths import new as new_greedy
from vllm.config import VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.v1.sample.logits_processor import build_logitsprocs

from neuron_cache import Artifact
from neuron_infer import DecoderRuntime
from neuron_infer.engine import BatchExecutor
from neuron_vllm.runner import NeuronModelRunner
from neuron_vllm.sampling import CPU, HostSampling


def ids(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 49152) for _ in range(n)]


SYSTEM = [1, *ids(0, 31)]  # 32 tokens: two 16-token blocks of vLLM's prefix cache


def new(rid: str, prompt: list[int], computed: int = 0):
    """Greedy, with the sampled token's logprob (vLLM's raw logprobs: the graph's logits, log-softmaxed)."""
    return new_greedy(rid, prompt, computed, SamplingParams(temperature=0.0, logprobs=0))


class Probe(Driver):
    """Also keeps, per request, the logprob of every token it sampled and the tokens encoded, so that a test can
    check the logits against transformers and that a reused prefix was not encoded again."""

    def __init__(self, runner: NeuronModelRunner):
        super().__init__(runner)
        self.logprobs: dict[str, list[float]] = {}
        self.encoded = 0
        executor = runner.executor
        encode, prefill_raw = executor.encode, executor.prefill_raw

        def counting_encode(slot, tokens, start):
            self.encoded += len(tokens)
            return encode(slot, tokens, start)

        def counting_prefill(slot, prompt, *args):
            self.encoded += len(prompt)
            return prefill_raw(slot, prompt, *args)

        executor.encode, executor.prefill_raw = counting_encode, counting_prefill

    def step(self, scheduled, **kwargs):
        result = super().step(scheduled, **kwargs)
        lists = self.last.logprobs
        for rid, tokens in result.items():
            if tokens and lists is not None:
                self.logprobs.setdefault(rid, []).append(float(lists.logprobs[self.last.req_id_to_index[rid]][0]))
        return result


def check_logprobs(model, prompt: list[int], tokens: list[int], got: list[float]) -> None:
    """Each sampled token's logprob against transformers' log-softmax at its position."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].float()
    want = logits.log_softmax(-1)[len(prompt) - 1:-1].gather(1, torch.tensor(tokens).view(-1, 1)).view(-1)
    assert len(got) == len(tokens)
    assert torch.allclose(torch.tensor(got), want, atol=2e-4), (got, want.tolist())


def make(artifact, prefix_caching: bool = True) -> Probe:
    executor = BatchExecutor(DecoderRuntime(Artifact.open(artifact)))
    config = executor.config
    sampling = HostSampling(max_num_reqs=config.batch_size, max_model_len=config.sequence_length,
                            vocab_size=executor.runtime.vocab_size, logprobs_mode="raw_logprobs",
                            logitsprocs=build_logitsprocs(VllmConfig(), CPU, False, False))
    return Probe(NeuronModelRunner(executor, sampling, prefix_caching=prefix_caching, min_prefix_tokens=8))


def run(driver: Probe, rid: str, prompt: list[int], n: int, *, chunk: int | None = None, computed: int = 0,
        finish: bool = True) -> list[int]:
    """One request alone, the way vLLM schedules it: the prompt after `computed` tokens (vLLM's prefix-cache hit)
    in chunks of `chunk` tokens, then n - 1 decode steps."""
    chunk = chunk or len(prompt)
    done, first = computed, True
    while True:
        step = min(chunk, len(prompt) - done)
        if first:
            out = driver.step({rid: step}, new_reqs=[new(rid, prompt, computed=done)])
            first = False
        else:
            out = driver.step({rid: step}, cached=[rid], computed=[done])
        done += step
        if done == len(prompt):
            break
        assert out == {rid: []}, "a partial prompt samples nothing"
    tokens = list(out[rid])
    for _ in range(n - 1):
        tokens += driver.step({rid: 1}, cached=[rid], computed=[len(prompt) + len(tokens) - 1])[rid]
    if finish:
        driver.step({}, finished=[rid])
    return tokens


@pytest.fixture
def driver(tiny_artifact) -> Probe:
    return make(tiny_artifact)


def test_a_prompt_longer_than_the_largest_bucket_in_vllms_chunks(driver, tiny_reference):
    prompt = [1, *ids(1, 49)]  # 50 tokens: over max_context_length=32, under sequence_length=64
    tokens = run(driver, "a", prompt, 6, chunk=16)
    assert tokens == greedy(tiny_reference, prompt, 6)
    check_logprobs(tiny_reference, prompt, tokens, driver.logprobs["a"])
    assert driver.runner.executor.runtime.max_prompt_length == 63


def test_a_finished_requests_prefix_is_reused_where_vllm_says_it_is_computed(driver, tiny_reference):
    a, b = SYSTEM + ids(2, 5), SYSTEM + ids(3, 7)
    assert run(driver, "a", a, 4) == greedy(tiny_reference, a, 4)
    # vLLM's prefix cache hits both 16-token blocks of SYSTEM: it schedules only the rest.
    before = driver.encoded
    tokens = run(driver, "b", b, 5, computed=32)
    assert tokens == greedy(tiny_reference, b, 5)
    check_logprobs(tiny_reference, b, tokens, driver.logprobs["b"])
    assert driver.encoded - before == len(b) - len(SYSTEM), "the reused prefix was encoded again"
    stats = driver.runner.prefix.stats
    assert (stats.hits, stats.hit_tokens, stats.copies) == (1, len(SYSTEM), 0)


def test_the_runner_reuses_a_prefix_vllm_did_not_count(driver, tiny_reference):
    """vLLM's hashes cover whole blocks only (or its cache is off); the runner still skips what its rows hold."""
    a, b = SYSTEM + ids(4, 5), SYSTEM[:27] + ids(5, 6)  # shares 27 tokens: one full block for vLLM
    run(driver, "a", a, 2)
    before = driver.encoded
    tokens = run(driver, "b", b, 5, computed=16)
    assert tokens == greedy(tiny_reference, b, 5)
    check_logprobs(tiny_reference, b, tokens, driver.logprobs["b"])
    assert driver.encoded - before == len(b) - 27
    assert driver.runner.prefix.stats.hit_tokens == 27


def test_what_vllm_counts_as_computed_but_the_rows_lack_is_encoded(tiny_artifact, tiny_reference):
    """A hit vLLM reports for rows the runner cannot reuse (here: its own cache off) is caught up with the chunk."""
    driver = make(tiny_artifact, prefix_caching=False)
    a, b = SYSTEM + ids(6, 5), SYSTEM + ids(7, 7)
    run(driver, "a", a, 2)
    before = driver.encoded
    tokens = run(driver, "b", b, 5, computed=32)
    assert tokens == greedy(tiny_reference, b, 5)
    check_logprobs(tiny_reference, b, tokens, driver.logprobs["b"])
    assert driver.encoded - before == len(b), "all of b, the 32 tokens vLLM counted included"
    assert driver.runner.prefix.stats.hit_tokens == 0


def test_a_running_requests_prefix_is_copied_into_the_new_slot(driver, tiny_reference):
    a, b = SYSTEM + ids(8, 4), SYSTEM + ids(9, 6)
    ta = driver.step({"a": len(a)}, new_reqs=[new("a", a)])["a"]
    out = driver.step({"a": 1, "b": len(b) - 32}, new_reqs=[new("b", b, computed=32)], cached=["a"],
                      computed=[len(a)])
    ta, tb = ta + out["a"], out["b"]
    for _ in range(4):
        out = driver.step({"a": 1, "b": 1}, cached=["a", "b"], computed=[len(a) + len(ta) - 1, len(b) + len(tb) - 1])
        ta, tb = ta + out["a"], tb + out["b"]
    assert ta == greedy(tiny_reference, a, len(ta))
    assert tb == greedy(tiny_reference, b, len(tb))
    check_logprobs(tiny_reference, a, ta, driver.logprobs["a"])
    check_logprobs(tiny_reference, b, tb, driver.logprobs["b"])
    assert driver.encoded == len(a) + len(b) - len(SYSTEM)
    stats = driver.runner.prefix.stats
    assert (stats.hits, stats.copies, stats.hit_tokens) == (1, 1, len(SYSTEM))


@pytest.fixture(scope="module")
def full_batch_only(tiny_checkpoint, tmp_path_factory):
    """The tiny artifact without the one-row decode graph: every decode step runs both rows."""
    from support.tiny import export_tiny

    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("art") / "tiny-smol-no-rows", decode_batches=[])


def test_full_batch_decodes_leave_a_half_encoded_prompt_and_a_free_prefix_alone(full_batch_only, tiny_reference):
    """Both rows run every decode step: the row of a prompt vLLM is still feeding in chunks, and later the free
    row of a finished request, must rewrite their own last entry, not take token 0 at position 0."""
    driver = make(full_batch_only)
    assert driver.runner.config.decode_rows == []
    a, b = [1, *ids(10, 6)], SYSTEM + ids(11, 9)
    ta = driver.step({"a": len(a)}, new_reqs=[new("a", a)])["a"]
    done = 16
    out = driver.step({"a": 1, "b": done}, new_reqs=[new("b", b)], cached=["a"], computed=[len(a)])
    ta += out["a"]
    while done < len(b):  # a decodes (full batch) while b's prompt arrives 8 tokens a step
        step = min(8, len(b) - done)
        out = driver.step({"a": 1, "b": step}, cached=["a", "b"], computed=[len(a) + len(ta) - 1, done])
        ta += out["a"]
        done += step
    tb = list(out["b"])
    for _ in range(3):
        out = driver.step({"b": 1}, cached=["b"], computed=[len(b) + len(tb) - 1])  # a sits idle, held
        tb += out["b"]
    assert ta == greedy(tiny_reference, a, len(ta))
    assert tb == greedy(tiny_reference, b, len(tb))
    check_logprobs(tiny_reference, b, tb, driver.logprobs["b"])
    driver.step({}, finished=["b"])
    # b's slot is free and holds SYSTEM; a decodes on through full-batch steps; then c reuses b's rows.
    for _ in range(3):
        ta += driver.step({"a": 1}, cached=["a"], computed=[len(a) + len(ta) - 1])["a"]
    check_logprobs(tiny_reference, a, ta, driver.logprobs["a"])
    c = SYSTEM + ids(12, 4)
    before = driver.encoded
    tc = run(driver, "c", c, 4, computed=32)
    assert tc == greedy(tiny_reference, c, 4)
    check_logprobs(tiny_reference, c, tc, driver.logprobs["c"])
    assert driver.encoded - before == len(c) - len(SYSTEM)


def test_prompt_logprobs_of_a_chunked_prompt_match_transformers(driver, tiny_reference):
    """prompt_logprobs=2: every position's logprob of the next prompt token, its rank and the top 2, through the
    chunked-prefill graphs (vLLM schedules the prompt in 16-token chunks); the prefix cache is bypassed."""
    run(driver, "warm", SYSTEM + ids(13, 3), 1)  # holds SYSTEM: a reuse here would leave positions unscored
    prompt = SYSTEM + ids(14, 9)
    params = SamplingParams(temperature=0.0, prompt_logprobs=2)
    done, out = 0, None
    while done < len(prompt):
        step = min(16, len(prompt) - done)
        kwargs = dict(new_reqs=[new_greedy("p", prompt, 0, params)]) if done == 0 else dict(cached=["p"],
                                                                                           computed=[done])
        out = driver.step({"p": step}, **kwargs)
        if done + step < len(prompt):
            assert driver.last.prompt_logprobs_dict == {}, "sent only once the whole prompt is scored"
        done += step
    assert out["p"] == greedy(tiny_reference, prompt, 1)
    got = driver.last.prompt_logprobs_dict["p"]
    with torch.no_grad():
        lp = tiny_reference(torch.tensor([prompt])).logits[0, :-1].float().log_softmax(-1)
    targets = torch.tensor(prompt[1:])
    assert got.logprob_token_ids.shape == (len(prompt) - 1, 3)
    assert torch.equal(got.logprob_token_ids[:, 0], targets)
    assert torch.allclose(got.logprobs[:, 0], lp.gather(1, targets.view(-1, 1)).view(-1), atol=2e-4)
    # Ranks count the tokens at least as likely; the random model's logprobs crowd within ~1e-4 of each other, where
    # float32 noise reorders a few neighbours.
    ranks = (lp >= lp.gather(1, targets.view(-1, 1))).sum(-1)
    assert (got.selected_token_ranks - ranks).abs().max() <= 3
    top = lp.topk(2)
    assert torch.equal(got.logprob_token_ids[:, 1:], top.indices)
    assert torch.allclose(got.logprobs[:, 1:], top.values, atol=2e-4)
    stats = driver.runner.prefix.stats
    assert (stats.queries, stats.hits) == (1, 0), "p is never looked up: its positions must all be scored"
