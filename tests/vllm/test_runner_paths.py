"""NeuronModelRunner on the scheduler paths the live server rarely takes, driven step by step with vLLM's own
SchedulerOutput / NewRequestData / CachedRequestData (a renamed vLLM field breaks these tests, as it would break
the runner), sampled by vLLM's Sampler through HostSampling.

With no KV-cache spec from the worker, vLLM 0.32 never chunks prompts nor preempts, so the server
tests cannot reach these paths; the runner still handles them (a scheduler change must not corrupt
a slot). Greedy tokens are compared with transformers' greedy continuation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vllm.config import VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.output import CachedRequestData, GrammarOutput, NewRequestData, SchedulerOutput
from vllm.v1.sample.logits_processor import build_logitsprocs

from neuron_cache import Artifact
from neuron_infer import DecoderRuntime
from neuron_infer.engine import BatchExecutor
from neuron_vllm.runner import NeuronModelRunner
from neuron_vllm.sampling import CPU, HostSampling

A = [1, 17, 33, 5, 90, 41, 7, 12, 64]
B = [1, 120, 3, 44]


def greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def new(rid: str, prompt: list[int], computed: int = 0, params: SamplingParams | None = None) -> NewRequestData:
    return NewRequestData(req_id=rid, prompt_token_ids=prompt, mm_features=[],
                          sampling_params=params or SamplingParams(temperature=0.0), pooling_params=None, block_ids=(),
                          num_computed_tokens=computed, lora_request=None)


class Driver:
    """Feeds a runner SchedulerOutputs and remembers what the scheduler would (output counts)."""

    def __init__(self, runner: NeuronModelRunner):
        self.runner = runner
        self.outputs: dict[str, int] = {}
        self.last = None  # the last ModelRunnerOutput

    def step(self, scheduled: dict[str, int], *, new_reqs=(), cached=(), computed=(), all_tokens=None, resumed=(),
             finished=(), preempted=(), grammar: GrammarOutput | None = None) -> dict[str, list[int]]:
        cached_data = CachedRequestData(
            req_ids=list(cached), resumed_req_ids=set(resumed), new_token_ids=[[] for _ in cached],
            all_token_ids=all_tokens or {}, new_block_ids=[None for _ in cached], num_computed_tokens=list(computed),
            num_output_tokens=[self.outputs.get(r, 0) for r in cached])
        so = SchedulerOutput(scheduled_new_reqs=list(new_reqs), scheduled_cached_reqs=cached_data,
                             num_scheduled_tokens=dict(scheduled), total_num_scheduled_tokens=sum(scheduled.values()),
                             scheduled_spec_decode_tokens={}, scheduled_encoder_inputs={},
                             finished_req_ids=set(finished), free_encoder_mm_hashes=[],
                             preempted_req_ids=set(preempted))
        out = self.runner.execute_model(so)
        if out is None:
            out = self.runner.sample_tokens(grammar)
        self.last = out
        for rid in finished:
            self.outputs.pop(rid, None)
        result = {rid: out.sampled_token_ids[i] for rid, i in out.req_id_to_index.items()}
        for rid, ids in result.items():
            self.outputs[rid] = self.outputs.get(rid, 0) + len(ids)
        return result


def make_driver(artifact, logprobs_mode: str = "raw_logprobs") -> Driver:
    executor = BatchExecutor(DecoderRuntime(Artifact.open(artifact)))
    config = executor.config
    sampling = HostSampling(max_num_reqs=config.batch_size, max_model_len=config.sequence_length,
                            vocab_size=executor.runtime.vocab_size, logprobs_mode=logprobs_mode,
                            logitsprocs=build_logitsprocs(VllmConfig(), CPU, False, False))
    return Driver(NeuronModelRunner(executor, sampling))


@pytest.fixture
def driver(tiny_artifact) -> Driver:
    return make_driver(tiny_artifact)


def test_a_chunked_prompt_is_prefilled_when_its_last_chunk_is_scheduled(driver, tiny_reference):
    out = driver.step({"a": 5}, new_reqs=[new("a", A)])
    assert out == {"a": []}, "a partial prompt samples nothing"
    out = driver.step({"a": len(A) - 5}, cached=["a"], computed=[5])
    tokens = list(out["a"])
    for _ in range(5):
        tokens += driver.step({"a": 1}, cached=["a"], computed=[len(A) + len(tokens) - 1])["a"]
    assert tokens == greedy(tiny_reference, A, 6)


def test_a_seeded_request_draws_the_same_tokens_whether_or_not_its_prompt_was_chunked(tiny_artifact, driver):
    params = SamplingParams(temperature=1.0, seed=7)
    whole = [driver.step({"a": len(A)}, new_reqs=[new("a", A, params=params)])["a"][0]]
    for _ in range(3):
        whole += driver.step({"a": 1}, cached=["a"], computed=[len(A) + len(whole) - 1])["a"]
    driver.step({}, finished=["a"])
    assert driver.step({"b": 4}, new_reqs=[new("b", A, params=params)]) == {"b": []}  # the discarded row
    chunked = driver.step({"b": len(A) - 4}, cached=["b"], computed=[4])["b"]
    for _ in range(3):
        chunked += driver.step({"b": 1}, cached=["b"], computed=[len(A) + len(chunked) - 1])["b"]
    assert chunked == whole


def test_the_grammar_bitmask_reaches_the_row_of_its_request(driver, tiny_reference):
    """vLLM sends bitmasks in its own order; the runner's logits rows follow vLLM's batch order."""
    forced = 4242
    words = (driver.runner.sampling.vocab_size + 31) // 32
    mask = np.zeros((1, words), dtype=np.int32)
    mask[0, forced // 32] = np.int32(np.uint32(1 << (forced % 32)).view(np.int32))
    out = driver.step({"a": len(A), "b": len(B)}, new_reqs=[new("a", A), new("b", B)],
                      grammar=GrammarOutput(structured_output_request_ids=["b"], grammar_bitmask=mask))
    assert out == {"a": greedy(tiny_reference, A, 1), "b": [forced]}


def test_a_preempted_request_resumes_with_its_tokens_and_a_fresh_slot(driver, tiny_reference):
    runner = driver.runner
    tokens = {"a": driver.step({"a": len(A)}, new_reqs=[new("a", A)])["a"]}
    tokens["b"] = driver.step({"b": len(B)}, new_reqs=[new("b", B)])["b"]
    for _ in range(2):
        out = driver.step({"a": 1, "b": 1}, cached=["a", "b"], computed=[len(A) + 0, len(B) + 0])
        tokens["a"] += out["a"]
        tokens["b"] += out["b"]
    assert sorted(runner.busy_slots.values()) == ["a", "b"]
    # b is preempted: its slot is freed while a decodes on.
    out = driver.step({"a": 1}, cached=["a"], computed=[0], preempted=["b"])
    tokens["a"] += out["a"]
    assert list(runner.busy_slots.values()) == ["a"]
    # c takes b's freed slot and overwrites its KV rows, then finishes.
    c_prompt = [1, 99, 98, 97, 96, 95]
    assert driver.step({"c": len(c_prompt)}, new_reqs=[new("c", c_prompt)])["c"] == greedy(tiny_reference, c_prompt, 1)
    driver.step({}, finished=["c"])
    # b comes back resumed, with every token so far: it is prefilled again, then decodes.
    everything = B + tokens["b"]
    out = driver.step({"b": len(everything)}, cached=["b"], computed=[0], all_tokens={"b": everything}, resumed=["b"])
    tokens["b"] += out["b"]
    for _ in range(2):
        out = driver.step({"a": 1, "b": 1}, cached=["a", "b"], computed=[0, 0])
        tokens["a"] += out["a"]
        tokens["b"] += out["b"]
    assert tokens["a"] == greedy(tiny_reference, A, len(tokens["a"]))
    assert tokens["b"] == greedy(tiny_reference, B, len(tokens["b"]))
    driver.step({}, finished=["a", "b"])
    assert runner.busy_slots == {}
    assert runner.sampling.req_ids == []


def test_logprobs_follow_vllms_logprobs_mode(tiny_artifact):
    """raw_logprobs: before logit_bias; processed_logprobs: of the logits the token was sampled from."""
    params = SamplingParams(temperature=0.0, logprobs=1, logit_bias={4242: 100.0})
    got = {}
    for mode in ("raw_logprobs", "processed_logprobs"):
        d = make_driver(tiny_artifact, mode)
        assert d.step({"a": len(A)}, new_reqs=[new("a", A, params=params)]) == {"a": [4242]}
        lists = d.last.logprobs
        assert lists.logprob_token_ids[0][0] == 4242
        got[mode] = float(lists.logprobs[0][0])
    assert got["processed_logprobs"] == pytest.approx(0.0, abs=1e-4)
    assert got["raw_logprobs"] < -5, "a raw logprob ignores the bias"
