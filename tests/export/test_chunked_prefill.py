"""Chunked prefill (`chunked_prefill` graphs, `DecoderRuntime.prefill_chunk`, `copy_kv`) against transformers.

Artifacts with a 128-position cache, one 16-token prompt bucket and chunks of 8 and 16: a 100-token prompt
(past max_context_length) is encoded in chunks and decoded, and the logits of every prompt position and every
decode step are compared with transformers' eager model on the same weights, for llama, mistral with a sliding
window shorter than the prompt, and qwen3 (q/k norms). A prefix copied from another slot then continued at
start > 0, and a last chunk running past the cache end, must give the same logits as one full forward.
Each comparison has a mutation next to it that must fail it (a wrong offset, a missing prefix).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from export_testlib import COMMON_CONFIG, assert_logits_close, export_tiny, open_runtime, prompt_ids, reset_kv
from support.tiny import save_tiny_checkpoint

from neuron_cache import NeuronConfig
from neuron_cache.signature import SignatureError
from neuron_export.errors import ShapeError
from neuron_export.export import default_chunk_buckets

SEQ = 128
CHUNKS = [8, 16]
SHAPES = dict(sequence_length=SEQ, max_context_length=16, context_buckets=[16], chunk_buckets=CHUNKS, kv_buckets=[],
              decode_batches=[])
BASE = dict(COMMON_CONFIG, max_position_embeddings=SEQ, hidden_size=64, intermediate_size=96, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)
ARCHS = {
    "llama": lambda: transformers.LlamaConfig(**BASE),
    "mistral-window": lambda: transformers.MistralConfig(**BASE, sliding_window=6),
    "qwen3": lambda: transformers.Qwen3Config(**BASE, use_sliding_window=False),
}
PROMPT = prompt_ids(100, COMMON_CONFIG["vocab_size"], seed=7)
STEPS = 4


def export_arch(name: str, root):
    hf_model = save_tiny_checkpoint(ARCHS[name](), root / "ckpt")
    return hf_model, export_tiny(root / "ckpt", root / "art", **SHAPES)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return export_arch("llama", tmp_path_factory.mktemp("chunk-llama"))


def reference_logits(hf_model, tokens: list[int]) -> torch.Tensor:
    """transformers' logits at every position of `tokens`: (len(tokens), vocab)."""
    with torch.no_grad():
        return hf_model(torch.tensor([tokens])).logits[0].float()


def assert_rows_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    for i in range(ref.shape[0]):
        assert_logits_close(ours[i], ref[i], f"{what}, row {i}")


def test_chunk_graphs_are_in_the_contract(llama):
    config = NeuronConfig.load(llama[1])
    chunked = config.graphs_by_role("chunked_prefill")
    assert config.chunk_buckets == CHUNKS and sorted(chunked) == ["chunked_prefill_16", "chunked_prefill_8"]
    graph = chunked["chunked_prefill_16"]
    assert [(t.name, t.shape) for t in graph.inputs] == [("input_ids", [1, 16]), ("seq_id", [1]), ("start", [1])]
    assert [(t.name, t.shape, t.dtype) for t in graph.outputs] == [("logits", [16, 151], "float32")]
    assert config.chunk_plan(100) == [16] * 6 + [8]
    assert open_runtime(llama[1]).max_prompt_length == SEQ - 1


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_long_prompt_in_chunks_then_decode_matches_transformers(arch, llama, tmp_path):
    hf_model, art = llama if arch == "llama" else export_arch(arch, tmp_path)
    runtime = open_runtime(art)
    reset_kv(runtime)
    slot = 1
    logits = runtime.prefill_chunk(torch.tensor(PROMPT), slot, 0)  # 6 chunks of 16, then 4 tokens in a chunk of 8
    assert_rows_close(logits, reference_logits(hf_model, PROMPT), f"{arch}: every prompt position")
    seq, last = list(PROMPT), logits[-1]
    for step in range(STEPS):
        seq.append(int(last.argmax()))
        last = runtime.decode(torch.tensor([0, seq[-1]]), torch.tensor([0, len(seq) - 1]))[slot]
        assert_logits_close(last, reference_logits(hf_model, seq)[-1], f"{arch}: decode step {step}")


def test_wrong_offset_is_caught(llama):
    """The mutation: the same tail encoded one position late must not match (rope and mask are absolute)."""
    hf_model, art = llama
    runtime = open_runtime(art)
    ref = reference_logits(hf_model, PROMPT)
    runtime.prefill_chunk(torch.tensor(PROMPT[:60]), 0, 0)
    right = runtime.prefill_chunk(torch.tensor(PROMPT[60:]), 0, 60)
    assert_rows_close(right, ref[60:], "tail at start 60")
    runtime.prefill_chunk(torch.tensor(PROMPT[:61]), 1, 0)
    wrong = runtime.prefill_chunk(torch.tensor(PROMPT[60:]), 1, 61)
    with pytest.raises(AssertionError, match="max"):
        assert_rows_close(wrong, ref[60:], "tail at start 61")


def test_prefix_copied_from_another_slot_then_continued(llama):
    hf_model, art = llama
    runtime = open_runtime(art)
    reset_kv(runtime)
    prompt = PROMPT[:40]
    ref = reference_logits(hf_model, prompt)
    runtime.prefill_chunk(torch.tensor(prompt), 0, 0)
    # Without the prefix, slot 1 attends over zeros: the mutation that must fail.
    with pytest.raises(AssertionError, match="max"):
        assert_rows_close(runtime.prefill_chunk(torch.tensor(prompt[30:]), 1, 30), ref[30:], "no prefix")
    slot0 = [runtime.constants[s.name][0].clone() for s in runtime.config.state]
    runtime.copy_kv(0, 1, 30)
    assert_rows_close(runtime.prefill_chunk(torch.tensor(prompt[30:]), 1, 30), ref[30:], "prefix copied, then 10 more")
    assert all(torch.equal(runtime.constants[s.name][0], before) for s, before in zip(runtime.config.state, slot0))
    token = int(ref[-1].argmax())
    out = runtime.decode(torch.tensor([0, token]), torch.tensor([0, len(prompt)]))[1]
    assert_logits_close(out, reference_logits(hf_model, [*prompt, token])[-1], "decode after the copied prefix")


def test_last_chunk_past_the_cache_end(llama):
    """125 tokens, then 3 more at start 125 through the chunk of 8 (positions 125..132): the graph writes only
    positions inside the cache, and the other slot is untouched."""
    hf_model, art = llama
    runtime = open_runtime(art)
    reset_kv(runtime)
    tokens = prompt_ids(SEQ, COMMON_CONFIG["vocab_size"], seed=11)
    ref = reference_logits(hf_model, tokens)
    other = [runtime.constants[s.name][0].clone() for s in runtime.config.state]
    first = runtime.prefill_chunk(torch.tensor(tokens[:125]), 1, 0)
    last = runtime.prefill_chunk(torch.tensor(tokens[125:]), 1, 125)
    assert_rows_close(torch.cat([first, last]), ref, "128 positions, the last chunk past the end")
    assert all(torch.equal(runtime.constants[s.name][0], before) for s, before in zip(runtime.config.state, other))


def test_runtime_errors(llama):
    runtime = open_runtime(llama[1])
    three = torch.tensor([3, 4, 5])
    with pytest.raises(ValueError, match=r"positions \[126, 129\) do not fit the KV cache: .* sequence_length=128"):
        runtime.prefill_chunk(three, 0, 126)
    with pytest.raises(ValueError, match=r"start must be >= 0"):
        runtime.prefill_chunk(three, 0, -1)
    with pytest.raises(ValueError, match=r"slot 2 is outside the compiled batch \(0..1\)"):
        runtime.prefill_chunk(three, 2, 0)
    with pytest.raises(ValueError, match="empty"):
        runtime.prefill_chunk(torch.tensor([], dtype=torch.long), 0, 0)
    with pytest.raises(ValueError, match=r"token id 151, outside this artifact's vocabulary \[0, 151\)"):
        runtime.prefill_chunk(torch.tensor([1, 151]), 0, 0)
    with pytest.raises(ValueError, match=r"dst_slot 5 is outside"):
        runtime.copy_kv(0, 5, 3)
    with pytest.raises(ValueError, match=r"length 129: copy 0..sequence_length=128"):
        runtime.copy_kv(0, 1, 129)


def test_artifact_without_chunk_graphs_still_loads(llama, tmp_path):
    """An artifact written before chunked prefill: no chunk_buckets field, no chunked_prefill graphs."""
    hf_model, art = llama
    old = shutil.copytree(art, tmp_path / "old")
    data = json.loads((old / "neuron_config.json").read_text())
    del data["chunk_buckets"]
    data["graphs"] = {k: g for k, g in data["graphs"].items() if g["role"] != "chunked_prefill"}
    (old / "neuron_config.json").write_text(json.dumps(data))
    runtime = open_runtime(old)
    assert runtime.config.chunk_buckets == [] and runtime.max_prompt_length == 16
    assert_logits_close(runtime.prefill(torch.tensor(PROMPT[:16]), 0), reference_logits(hf_model, PROMPT[:16])[-1],
                        "context encoding")
    with pytest.raises(ValueError, match=r"no chunked_prefill graphs.*re-export it with --chunk_buckets"):
        runtime.prefill_chunk(torch.tensor(PROMPT[:4]), 0, 16)


def test_a_config_that_lies_about_a_chunk_is_refused(llama, tmp_path):
    lie = shutil.copytree(llama[1], tmp_path / "lie")
    data = json.loads((lie / "neuron_config.json").read_text())
    data["chunk_buckets"] = [8, 12]
    data["graphs"]["chunked_prefill_16"]["bucket"] = 12
    (lie / "neuron_config.json").write_text(json.dumps(data))
    runtime = open_runtime(lie)
    with pytest.raises(SignatureError, match=r"compiled for bucket=16, but neuron_config.json says "
                                             r"graphs.chunked_prefill_16.bucket=12"):
        runtime.prefill_chunk(torch.tensor(PROMPT[:30]), 0, 0)


def test_chunk_bucket_defaults_and_errors(llama, tmp_path):
    assert default_chunk_buckets([64, 128, 256, 512]) == [64, 256]
    assert default_chunk_buckets([16]) == [16] and default_chunk_buckets([512, 1024]) == [512]
    checkpoint = llama[1].parent / "ckpt"
    with pytest.raises(ShapeError, match=r"option 'chunk_buckets' = \[8, 32\]: holds a chunk length outside "
                                         r"1..max_context_length \(16\)"):
        export_tiny(checkpoint, tmp_path / "bad", **{**SHAPES, "chunk_buckets": [8, 32]})
    with pytest.raises(ShapeError, match=r"option 'chunk_buckets' = \[16, 8\]: must be strictly increasing"):
        export_tiny(checkpoint, tmp_path / "bad", **{**SHAPES, "chunk_buckets": [16, 8]})
