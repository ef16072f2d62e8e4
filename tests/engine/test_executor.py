"""BatchExecutor, the layer the vLLM plugin drives: a live slot that samples nothing in a decode
step must keep its KV rows (the runner passes it in `hold`)."""

from __future__ import annotations

import pytest
from engine_testlib import transformers_greedy

from neuron_cache import Artifact
from neuron_infer import DecoderRuntime
from neuron_infer.engine import BatchExecutor, DecodeEntry, TokenSampler

A, B = [1, 17, 33, 5, 90, 41, 7], [1, 120, 3]


@pytest.fixture(scope="module")
def executor(tiny_artifact) -> BatchExecutor:
    return BatchExecutor(DecoderRuntime(Artifact.open(tiny_artifact)))


def continue_b_after_an_a_only_step(executor: BatchExecutor, hold_b: bool) -> list[int]:
    greedy = TokenSampler.greedy()
    a = [executor.prefill(0, A, greedy).token]
    b = [executor.prefill(1, B, greedy).token]
    # Slot 0 decodes alone; slot 1 is live but sits this step out (vLLM prefilled it, say).
    hold = {1: (b[-1], len(B))} if hold_b else None
    a.append(executor.decode({0: DecodeEntry(a[-1], len(A), greedy)}, hold)[0].token)
    for _ in range(5):
        b.append(executor.decode({1: DecodeEntry(b[-1], len(B) + len(b) - 1, greedy)})[1].token)
    return b


def test_a_held_slot_keeps_its_kv_rows(executor, reference_model):
    assert continue_b_after_an_a_only_step(executor, hold_b=True) == transformers_greedy(reference_model, B, 6)


def test_without_hold_an_idle_live_slot_is_clobbered(executor, reference_model):
    # The control: the idle row's token-0-at-position-0 write lands in slot 1's row 0.
    assert continue_b_after_an_a_only_step(executor, hold_b=False) != transformers_greedy(reference_model, B, 6)


@pytest.fixture(scope="module")
def on_device_executor(tiny_checkpoint, tmp_path_factory) -> BatchExecutor:
    from engine_testlib import export_tiny

    art = export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("ods") / "tiny-ods", on_device_sampling=True)
    return BatchExecutor(DecoderRuntime(Artifact.open(art)))


def test_on_device_sampling_graphs_decode_greedy_and_seeded(on_device_executor, reference_model):
    from neuron_infer.engine import Engine, RequestParams

    assert on_device_executor.on_device_sampling
    with Engine(on_device_executor.runtime) as engine:
        greedy = engine.add_request(A, RequestParams(max_tokens=6, ignore_eos=True))
        sampled = [engine.add_request(A, RequestParams(max_tokens=6, temperature=1.0, seed=s, ignore_eos=True))
                   for s in (3, 3, 4)]
        assert greedy.result().token_ids == transformers_greedy(reference_model, A, 6)
        runs = [h.result().token_ids for h in sampled]
    assert runs[0] == runs[1] != runs[2]
    assert on_device_executor.prefill(0, A, TokenSampler.greedy()).logits is None  # sampled on device
