"""Q4_0/Q4_1 GGUF blocks taken directly into the int4 format equal gguf's own dequantization (no compile here).

The GGUF is written with gguf's GGUFWriter the way llama.cpp's converter writes a llama: q/k rows permuted,
tied embeddings in `token_embd` only. The reference is gguf.quants.dequantize followed by transformers' own
`_reverse_permute_weights`, i.e. what `AutoModelForCausalLM.from_pretrained(gguf_file=...)` loads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, quants
from transformers import LlamaConfig
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from neuron_export import gguf_quant
from neuron_export.gguf_quant import read_int4_blocks
from neuron_export.models.build import build_decoder
from neuron_export.models.quant import Int4Linear, Int8Linear
from neuron_export.models.spec import StaticShapes
from neuron_export.quantize import dequantize, dequantize_int4, int4_pair, quantize_model

CONFIG = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
ATTN, MLP = "model.layers.0.self_attn", "model.layers.0.mlp"
# HF name -> (GGUF name, type, rows, columns)
TENSORS = {
    f"{ATTN}.q_proj.weight": ("blk.0.attn_q.weight", T.Q4_1, 64, 64),
    f"{ATTN}.k_proj.weight": ("blk.0.attn_k.weight", T.Q4_1, 32, 64),
    f"{ATTN}.v_proj.weight": ("blk.0.attn_v.weight", T.Q4_1, 32, 64),
    f"{ATTN}.o_proj.weight": ("blk.0.attn_output.weight", T.Q4_0, 64, 64),
    f"{MLP}.gate_proj.weight": ("blk.0.ffn_gate.weight", T.Q4_1, 128, 64),
    f"{MLP}.up_proj.weight": ("blk.0.ffn_up.weight", T.Q4_1, 128, 64),
    f"{MLP}.down_proj.weight": ("blk.0.ffn_down.weight", T.Q8_0, 64, 128),
    "lm_head.weight": ("token_embd.weight", T.Q8_0, 96, 64),
}


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `permute` (the inverse of what the loaders undo)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """The file, and HF name -> what transformers' loader would see (dequantized, rows un-permuted)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q4_1.gguf"
    rng = np.random.default_rng(0)
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    expected = {}
    for hf_name, (name, qtype, rows, cols) in TENSORS.items():
        w = (rng.standard_normal((rows, cols)) * 0.1 + rng.standard_normal((rows, 1)) * 0.05).astype(np.float32)
        heads = {"q_proj": CONFIG.num_attention_heads, "k_proj": CONFIG.num_key_value_heads}.get(hf_name.split(".")[-2])
        stored = _llama_cpp_permute(w, heads) if heads else w
        raw = quants.quantize(stored, qtype)
        writer.add_tensor(name, raw, raw_dtype=qtype)
        deq = quants.dequantize(raw, qtype)
        if heads:
            deq = LlamaTensorProcessor()._reverse_permute_weights(deq, CONFIG.num_attention_heads, heads)
        expected[hf_name] = deq
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, expected


def test_blocks_equal_gguf_dequantization(tiny_gguf):
    path, expected = tiny_gguf
    blocks, types = read_int4_blocks(path, CONFIG, list(TENSORS))
    assert set(blocks) == {n for n, (_, t, _, _) in TENSORS.items() if t in (T.Q4_0, T.Q4_1)}
    assert types[f"{MLP}.down_proj.weight"] == "Q8_0" and types["lm_head.weight"] == "Q8_0"  # (the tied head)
    for name, b in blocks.items():
        want = torch.from_numpy(expected[name])
        # zero = m + 8 d in float32: (q - 8) d + zero equals d q + m up to float32 rounding
        torch.testing.assert_close(b.dequantize(), want, rtol=0, atol=1e-6)
        assert b.q.dtype == torch.uint8 and int(b.q.max()) <= 15


def test_stored_int4_pair_is_exact_up_to_bf16_rounding_of_scale_and_zero(tiny_gguf):
    path, expected = tiny_gguf
    blocks, _ = read_int4_blocks(path, CONFIG, list(TENSORS))
    for name, b in blocks.items():
        got = dequantize_int4(*int4_pair(b.q, b.scale, b.zero))
        want = torch.from_numpy(expected[name])
        # bf16 keeps 8 significant bits (unit roundoff 2^-8): scale and zero each move by at most 2^-8 of
        # themselves, and |q - 8| <= 8.
        bound = (2.0 ** -8) * (8 * b.scale.abs() + b.zero.abs()).repeat_interleave(32, dim=1) + 1e-6
        assert ((got - want).abs() <= bound).all(), name
        assert not torch.equal(got, want) or b.ggml_type == "Q4_0"  # the bound is what is tested, not luck


def test_without_undoing_the_row_permutation_q_and_k_differ(tiny_gguf, monkeypatch):
    path, expected = tiny_gguf
    monkeypatch.setattr(gguf_quant, "_permuted_heads", lambda *_: None)
    blocks, _ = read_int4_blocks(path, CONFIG, [f"{ATTN}.q_proj.weight"])
    got = blocks[f"{ATTN}.q_proj.weight"].dequantize()
    assert (got - torch.from_numpy(expected[f"{ATTN}.q_proj.weight"])).abs().max() > 0.05


def test_swapped_nibble_order_differs(tiny_gguf, monkeypatch):
    path, expected = tiny_gguf
    real = gguf_quant._decode

    def swapped(data, ggml_type, rows):
        b = real(data, ggml_type, rows)
        q = b.q.view(rows, -1, 2, 16).flip(2).reshape(rows, -1)  # high nibbles first
        return gguf_quant.Int4Blocks(q=q, scale=b.scale, zero=b.zero, ggml_type=b.ggml_type)

    monkeypatch.setattr(gguf_quant, "_decode", swapped)
    blocks, _ = read_int4_blocks(path, CONFIG, [f"{ATTN}.v_proj.weight"])
    assert (blocks[f"{ATTN}.v_proj.weight"].dequantize() - torch.from_numpy(expected[f"{ATTN}.v_proj.weight"])).abs().max() > 0.05


@pytest.mark.parametrize("method", ["int4", "int8"])
def test_quantize_model_takes_the_blocks_and_requantizes_the_rest(tiny_gguf, method):
    path, expected = tiny_gguf
    shapes = StaticShapes(batch_size=1, sequence_length=32, decode_batches=[], context_buckets=[16], dtype="bfloat16",
                          on_device_sampling=False, max_topk=8, tensor_parallel_size=1)
    family, model = build_decoder(CONFIG, shapes)
    with torch.no_grad():  # the dequantized values transformers would bind (what a requantized module starts from)
        model.layers[0].mlp.down_proj.weight.copy_(torch.from_numpy(expected[f"{MLP}.down_proj.weight"]))
        model.embed_tokens.weight.copy_(torch.from_numpy(expected["lm_head.weight"]))
    logs: list[str] = []
    record = quantize_model(model, family, method, 32, gguf_file=path, hf_config=CONFIG, log=logs.append)
    if method == "int8":  # Q8_0's per-32 scales do not fit the per-channel kernel: everything requantized
        assert record.source == "export" and isinstance(model.lm_head, Int8Linear)
        assert any("dequantized, then quantized again" in line for line in logs)
        return
    assert record.source == "gguf:Q4_0+Q4_1"
    assert record.requantized == ["layers.0.mlp.down_proj", "lm_head"]
    assert any("layers.0.mlp.down_proj" in line and "Q8_0" in line for line in logs)
    assert isinstance(model.layers[0].attn.qkv_proj, Int4Linear)
    qkv = torch.cat([torch.from_numpy(expected[f"{ATTN}.{p}_proj.weight"]) for p in "qkv"])
    torch.testing.assert_close(dequantize(model.layers[0].attn.qkv_proj), qkv, rtol=2 ** -8, atol=2e-3)
    # requantized from the dequantized Q8_0 values: within int4's own error, not bit-equal
    down = torch.from_numpy(expected[f"{MLP}.down_proj.weight"])
    assert (dequantize(model.layers[0].mlp.down_proj) - down).abs().max() < 0.1
    assert model.embed_tokens.weight.dtype == torch.bfloat16  # the embedding stays 16-bit
