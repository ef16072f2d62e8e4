"""BatchExecutor, the layer the vLLM plugin drives: a live slot that samples nothing in a decode
step must keep its KV rows. Through the full-batch graph the runner passes it in `hold`; a graph
over a subset of the slots (decode_batches) never touches it."""

from __future__ import annotations

import pytest
from support.tiny import export_tiny, transformers_greedy

from neuron_cache import Artifact
from neuron_infer import DecoderRuntime
from neuron_infer.engine import BatchExecutor, DecodeEntry, TokenSampler

A, B = [1, 17, 33, 5, 90, 41, 7], [1, 120, 3]


@pytest.fixture(scope="module")
def executor(tiny_checkpoint, tmp_path_factory) -> BatchExecutor:
    """Only the full-batch decode graph: every step runs every row."""
    art = export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("full") / "tiny-full", decode_batches=[])
    return BatchExecutor(DecoderRuntime(Artifact.open(art)))


@pytest.fixture(scope="module")
def rows_executor(tiny_artifact) -> BatchExecutor:
    """The default export of a batch-2 artifact: plus a decode graph over one slot."""
    runtime = DecoderRuntime(Artifact.open(tiny_artifact))
    assert runtime.rows_for(1) == 1
    return BatchExecutor(runtime)


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


def test_a_one_slot_graph_leaves_the_other_slot_alone(rows_executor, reference_model, monkeypatch):
    # No hold needed: slot 0's step runs the rows-1 graph, which never writes slot 1's KV rows.
    calls = []
    decode_slots = rows_executor.runtime.decode_slots
    monkeypatch.setattr(rows_executor.runtime, "decode_slots", lambda *a, **k: calls.append(a[0]) or decode_slots(*a, **k))
    assert continue_b_after_an_a_only_step(rows_executor, hold_b=False) == transformers_greedy(reference_model, B, 6)
    assert calls == [[0]] + [[1]] * 5


def test_both_slots_run_the_full_batch_graph(rows_executor, reference_model, monkeypatch):
    greedy = TokenSampler.greedy()
    tokens = {0: [rows_executor.prefill(0, A, greedy).token], 1: [rows_executor.prefill(1, B, greedy).token]}
    monkeypatch.setattr(rows_executor.runtime, "decode_slots", lambda *a, **k: pytest.fail("two slots: full graph"))
    for step in range(5):
        entries = {0: DecodeEntry(tokens[0][-1], len(A) + step, greedy), 1: DecodeEntry(tokens[1][-1], len(B) + step, greedy)}
        out = rows_executor.decode(entries)
        for slot in (0, 1):
            tokens[slot].append(out[slot].token)
    assert tokens[0] == transformers_greedy(reference_model, A, 6)
    assert tokens[1] == transformers_greedy(reference_model, B, 6)


@pytest.fixture(scope="module")
def on_device_executor(tiny_checkpoint, tmp_path_factory) -> BatchExecutor:
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


def test_the_executor_is_the_one_decode_driver():
    """generate, the Engine and the vLLM runner step the runtime only through BatchExecutor. Validation is the
    other caller: it pins each compiled graph in turn on purpose, through the runtime's public methods."""
    import re
    from pathlib import Path

    packages = Path(__file__).resolve().parents[2] / "packages"
    step = re.compile(r"runtime\.(prefill|decode|decode_slots)\(")
    callers = {p.relative_to(packages).as_posix() for p in packages.rglob("*.py") if step.search(p.read_text())}
    assert callers == {"neuron-infer/src/neuron_infer/engine/executor.py", "neuron-infer/src/neuron_infer/validate.py"}
