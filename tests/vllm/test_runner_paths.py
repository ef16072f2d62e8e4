"""NeuronModelRunner on the scheduler paths the live server rarely takes, driven step by step.

With no KV-cache spec from the worker, vLLM 0.32 never chunks prompts nor preempts, so the server
tests cannot reach these paths; the runner still handles them (a scheduler change must not corrupt
a slot). Scheduler outputs are built with the fields vLLM 0.32's SchedulerOutput carries and the
runner reads. Every token is compared with transformers' greedy continuation.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from neuron_cache import Artifact
from neuron_infer import DecoderRuntime
from neuron_infer.engine import BatchExecutor
from neuron_vllm.runner import NeuronModelRunner

A = [1, 17, 33, 5, 90, 41, 7, 12, 64]
B = [1, 120, 3, 44]
GREEDY = SimpleNamespace(temperature=0.0, top_k=0, top_p=1.0, seed=None, logprobs=None)


def greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def new(rid: str, prompt: list[int], computed: int = 0):
    return SimpleNamespace(req_id=rid, prompt_token_ids=prompt, sampling_params=GREEDY, num_computed_tokens=computed)


def step(runner: NeuronModelRunner, scheduled: dict[str, int], *, new_reqs=(), cached=(), computed=(), all_tokens=None,
         resumed=(), finished=(), preempted=()) -> dict[str, list[int]]:
    so = SimpleNamespace(
        finished_req_ids=set(finished), preempted_req_ids=set(preempted), scheduled_new_reqs=list(new_reqs),
        scheduled_cached_reqs=SimpleNamespace(req_ids=list(cached), num_computed_tokens=list(computed),
                                              all_token_ids=all_tokens or {}, resumed_req_ids=set(resumed)),
        num_scheduled_tokens=dict(scheduled),
    )
    req_ids, sampled, _ = runner.execute(so)
    return dict(zip(req_ids, sampled))


@pytest.fixture
def runner(tiny_artifact) -> NeuronModelRunner:
    return NeuronModelRunner(BatchExecutor(DecoderRuntime(Artifact.open(tiny_artifact))))


def test_a_chunked_prompt_is_prefilled_when_its_last_chunk_is_scheduled(runner, tiny_reference):
    out = step(runner, {"a": 5}, new_reqs=[new("a", A)])
    assert out == {"a": []}, "a partial prompt samples nothing"
    out = step(runner, {"a": len(A) - 5}, cached=["a"], computed=[5])
    first = out["a"]
    tokens = list(first)
    for _ in range(5):
        tokens += step(runner, {"a": 1}, cached=["a"], computed=[len(A) + len(tokens) - 1])["a"]
    assert tokens == greedy(tiny_reference, A, 6)


def test_a_preempted_request_resumes_with_its_tokens_and_a_fresh_slot(runner, tiny_reference):
    tokens = {"a": step(runner, {"a": len(A)}, new_reqs=[new("a", A)])["a"]}
    tokens["b"] = step(runner, {"b": len(B)}, new_reqs=[new("b", B)])["b"]
    for _ in range(2):
        out = step(runner, {"a": 1, "b": 1}, cached=["a", "b"], computed=[len(A) + 0, len(B) + 0])
        tokens["a"] += out["a"]
        tokens["b"] += out["b"]
    assert sorted(runner.busy_slots.values()) == ["a", "b"]
    # b is preempted: its slot is freed while a decodes on.
    out = step(runner, {"a": 1}, cached=["a"], computed=[0], preempted=["b"])
    tokens["a"] += out["a"]
    assert list(runner.busy_slots.values()) == ["a"]
    # c takes b's freed slot and overwrites its KV rows, then finishes.
    c_prompt = [1, 99, 98, 97, 96, 95]
    assert step(runner, {"c": len(c_prompt)}, new_reqs=[new("c", c_prompt)])["c"] == greedy(tiny_reference, c_prompt, 1)
    step(runner, {}, finished=["c"])
    # b comes back resumed, with every token so far: it is prefilled again, then decodes.
    everything = B + tokens["b"]
    out = step(runner, {"b": len(everything)}, cached=["b"], computed=[0], all_tokens={"b": everything}, resumed=["b"])
    tokens["b"] += out["b"]
    for _ in range(2):
        out = step(runner, {"a": 1, "b": 1}, cached=["a", "b"], computed=[0, 0])
        tokens["a"] += out["a"]
        tokens["b"] += out["b"]
    assert tokens["a"] == greedy(tiny_reference, A, len(tokens["a"]))
    assert tokens["b"] == greedy(tiny_reference, B, len(tokens["b"]))
    step(runner, {}, finished=["a", "b"])
    assert runner.busy_slots == {}
