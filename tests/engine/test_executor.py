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
