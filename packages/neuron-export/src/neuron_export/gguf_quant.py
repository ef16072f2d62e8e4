"""4-bit GGUF blocks (Q4_0, Q4_1) taken as they are into the int4 weight-only format, never expanded to floats.

GGML block layouts (gguf's quants.py; 32 weights along the input dimension per block):
- Q4_1: f16 d, f16 m, 16 bytes of nibbles; w = d * q + m, q in 0..15.
- Q4_0: f16 d, 16 bytes of nibbles; w = d * (q - 8).
Byte j of a block holds element j in its low nibble and element j + 16 in its high nibble.

aten's int4 convention is w = (q - 8) * scale + zero per group of 32, so Q4_1 maps exactly onto
scale = d, zero = m + 8 d (Q4_0: zero = 0); only rounding the (scale, zero) pair to bfloat16 changes a value.
llama.cpp stores llama's q/k projections with their rows permuted (rope pairs interleaved); transformers'
GGUF loader undoes it on the dequantized matrix, and so do we on the blocks: rows move whole, a block
lies inside one row, so the blocks themselves are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BLOCK = 32
DIRECT_TYPES = ("Q4_0", "Q4_1")


@dataclass(kw_only=True, slots=True)
class Int4Blocks:
    """One (out, in) weight in aten's int4 convention, group 32: w = (q - 8) * scale + zero."""

    q: torch.Tensor  # (out, in) uint8, 0..15
    scale: torch.Tensor  # (out, in / 32) float32
    zero: torch.Tensor  # (out, in / 32) float32
    ggml_type: str

    def dequantize(self) -> torch.Tensor:
        out, k = self.q.shape
        w = (self.q.view(out, k // BLOCK, BLOCK).float() - 8) * self.scale[..., None] + self.zero[..., None]
        return w.view(out, k)


def _decode(data: np.ndarray, ggml_type: str, rows: int) -> Int4Blocks:
    """GGUF block bytes (rows, blocks * block_bytes) -> Int4Blocks."""
    head = 4 if ggml_type == "Q4_1" else 2
    blocks = np.ascontiguousarray(data).reshape(rows, -1, head + BLOCK // 2)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    nibbles = blocks[..., head:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).reshape(rows, -1)  # elements 0..15, then 16..31
    if ggml_type == "Q4_1":
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        zero = m + 8 * d
    else:
        zero = np.zeros_like(d)
    return Int4Blocks(q=torch.from_numpy(q.astype(np.uint8)), scale=torch.from_numpy(d),
                      zero=torch.from_numpy(zero), ggml_type=ggml_type)


def _unpermute_rows(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers' `_reverse_permute_weights` on the rows of a (rows, ...) tensor."""
    rows = t.shape[0]
    return t.reshape(n_head, rows // n_head // 2, 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def read_int4_blocks(path: Path, hf_config: Any, names: list[str]) -> tuple[dict[str, Int4Blocks], dict[str, str]]:
    """For each Hugging Face weight name in `names`: its GGUF blocks if stored as Q4_0 / Q4_1.

    Returns (blocks by HF name, GGML type name of every tensor found, by HF name). Names whose tensor is in
    another type, or missing, are absent from the first dict (the caller quantizes their dequantized values).
    """
    import gguf

    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(hf_config.model_type)
    if arch is None:
        return {}, {}
    name_map = gguf.get_tensor_name_map(arch, hf_config.num_hidden_layers)
    found: dict[str, Int4Blocks] = {}
    types: dict[str, str] = {}
    for hf_name in names:
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        if hf_name == "lm_head.weight" and gguf_name not in tensors:
            gguf_name = "token_embd.weight"  # tied embeddings: llama.cpp stores one tensor
        tensor = tensors.get(gguf_name)
        if tensor is None:
            continue
        types[hf_name] = tensor.tensor_type.name
        if tensor.tensor_type.name not in DIRECT_TYPES:
            continue
        blocks = _decode(np.asarray(tensor.data), tensor.tensor_type.name, int(tensor.shape[1]))
        heads = _permuted_heads(hf_config, hf_name)
        if heads:
            blocks = Int4Blocks(q=_unpermute_rows(blocks.q, heads), scale=_unpermute_rows(blocks.scale, heads),
                                zero=_unpermute_rows(blocks.zero, heads), ggml_type=blocks.ggml_type)
        found[hf_name] = blocks
    return found, types


def _permuted_heads(hf_config: Any, hf_name: str) -> int | None:
    """How many heads llama.cpp interleaved the rows of this weight over (None: not permuted)."""
    if hf_config.model_type != "llama":
        return None
    if hf_name.endswith("self_attn.q_proj.weight"):
        return hf_config.num_attention_heads
    if hf_name.endswith("self_attn.k_proj.weight"):
        return hf_config.num_key_value_heads
    return None
