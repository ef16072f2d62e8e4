"""Token-generation graphs over a subset of the slots (`decode_batches`), against transformers.

A batch-4 artifact with rows-1 and rows-2 graphs: four prompts prefilled into four slots, then
steps that advance some slots through the small graphs (in any slot order) and the rest later through
the full-batch graph. Every logit is compared with transformers' eager model; slots a small graph
does not name must come out untouched (their later logits would be wrong otherwise).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from export_testlib import (
    COMMON_CONFIG,
    assert_logits_close,
    export_tiny,
    greedy_reference,
    open_runtime,
    prompt_ids,
)
from support.tiny import save_tiny_checkpoint

from neuron_cache import NeuronConfig

CONFIG = dict(hidden_size=72, intermediate_size=112, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
              tie_word_embeddings=False)
BATCH = 4
STEPS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    hf_model = save_tiny_checkpoint(transformers.LlamaConfig(**{**COMMON_CONFIG, **CONFIG}), root / "ckpt")
    art = export_tiny(root / "ckpt", root / "art", batch_size=BATCH, decode_batches=[1, 2])
    return hf_model, art


def test_rows_graphs_are_in_the_contract(setup):
    _, art = setup
    config = NeuronConfig.load(art)
    rows = {name: g.rows for name, g in config.graphs.items() if g.role == "token_generation"}
    assert rows == {"token_generation": None, "token_generation_rows1": 1, "token_generation_rows2": 2}
    two = config.graphs["token_generation_rows2"]
    assert [(t.name, t.shape) for t in two.inputs] == [("input_ids", [2, 1]), ("positions", [2]), ("seq_ids", [2])]
    assert two.outputs[0].shape == [2, COMMON_CONFIG["vocab_size"]]


def test_default_is_one_row_graph_for_batches_above_one(tmp_path):
    from neuron_export.errors import ShapeError

    hf_dir = tmp_path / "ckpt"
    save_tiny_checkpoint(transformers.LlamaConfig(**{**COMMON_CONFIG, **CONFIG}), hf_dir)
    config = NeuronConfig.load(export_tiny(hf_dir, tmp_path / "b2", batch_size=2, context_buckets=[32]))
    assert [g.rows for g in config.graphs.values() if g.rows] == [1]
    single = NeuronConfig.load(export_tiny(hf_dir, tmp_path / "b1", batch_size=1, context_buckets=[32]))
    assert all(g.rows is None for g in single.graphs.values())
    with pytest.raises(ShapeError, match="between 1 and batch_size - 1"):
        export_tiny(hf_dir, tmp_path / "bad", batch_size=2, context_buckets=[32], decode_batches=[2])


def test_subsets_of_slots_decode_like_transformers_and_leave_the_others_alone(setup):
    hf_model, root = setup
    runtime = open_runtime(root)
    prompts = [prompt_ids(n, COMMON_CONFIG["vocab_size"], seed=n) for n in (5, 9, 13, 7)]
    refs = [greedy_reference(hf_model, p, 2 * STEPS) for p in prompts]  # (tokens, logits) per slot
    done = [0] * BATCH  # decode steps each slot has taken
    for slot, prompt in enumerate(prompts):
        assert_logits_close(runtime.prefill(torch.tensor(prompt), slot), refs[slot][1][0], f"prefill slot {slot}")

    def step(graph: str, slots: list[int]) -> None:
        tokens = torch.tensor([refs[s][0][done[s]] for s in slots])
        positions = torch.tensor([len(prompts[s]) + done[s] for s in slots])
        if graph == "token_generation":  # the full batch, slot i in row i
            assert slots == list(range(BATCH))
            logits = runtime.decode(tokens, positions)
        else:  # the runtime picks the smallest sub-batch graph that holds the slots: this one
            assert runtime.config.graphs[graph].rows == runtime.rows_for(len(slots)) == len(slots)
            logits = runtime.decode_slots(slots, tokens, positions)
        for i, s in enumerate(slots):
            done[s] += 1
            assert_logits_close(logits[i], refs[s][1][done[s]], f"{graph} slot {s} step {done[s]}")

    for _ in range(STEPS):
        step("token_generation_rows2", [3, 1])  # out of order on purpose
        step("token_generation_rows1", [2])
    # Slot 0 sat out every step above; the full graph now advances all four at their own positions.
    for _ in range(STEPS):
        step("token_generation", [0, 1, 2, 3])
    assert done == [STEPS, 2 * STEPS, 2 * STEPS, 2 * STEPS]


def test_export_validation_runs_the_rows_graphs(tmp_path, monkeypatch):
    # A rows graph that ignored seq_ids (always slot 0..n-1) must fail export's own validation.
    from neuron_export.errors import ValidationFailedError
    from neuron_export.export import ExportOptions, export
    from neuron_export.models import decoder

    hf_dir = tmp_path / "ckpt"
    save_tiny_checkpoint(transformers.LlamaConfig(**{**COMMON_CONFIG, **CONFIG}), hf_dir)
    options = dict(model=str(hf_dir), batch_size=2, sequence_length=48, max_context_length=32, context_buckets=[32],
                   backend="torch-export", disable_neuron_cache=True)
    export(ExportOptions(output=str(tmp_path / "good"), **options), log=lambda _m: None)  # validates, passes
    original = decoder.Attention.token_generation
    monkeypatch.setattr(decoder.Attention, "token_generation",
                        lambda self, x, cos, sin, positions, mask, seq_ids=None: original(
                            self, x, cos, sin, positions, mask,
                            None if seq_ids is None else torch.arange(seq_ids.shape[0])))
    with pytest.raises(ValidationFailedError, match="differ from transformers"):
        export(ExportOptions(output=str(tmp_path / "bad"), **options), log=lambda _m: None)
