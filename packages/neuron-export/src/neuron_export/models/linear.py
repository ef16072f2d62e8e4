"""A Linear that can run on weights pre-packed for the CPU's GEMM kernels.

Decode multiplies a few rows (the batch) by every weight; stock `F.linear` is far from the memory
bandwidth there, worse as the batch grows. oneDNN's linear on a weight reordered into its blocked
layout (`mkldnn._reorder_linear_weight`, what Inductor itself uses for AOT on CPU) is up to 2-3x
faster than both stock `F.linear` and MKL's packed GEMM (measured, SmolLM2 layer shapes, fp32,
2 threads, AVX2 AMD EPYC: 576->3072 at M=8: 275 vs 633 / 609 us; the 49152-row lm_head at M=8:
6.7-8.3 vs 18-27 ms; equal or better at M=1).

The reordered layout belongs to the oneDNN build and CPU that produce it and is an opaque tensor, so
it is never stored: the graph calls `mkldnn._linear_pointwise` on a `packed_weight` constant (a dense
placeholder at trace time), the artifact records how to derive it (`weights.derived`), and the
runtime reorders the stored weight at load and binds the opaque tensor in its place.

Prefill is compute-bound, and on CPUs without native bf16/fp16 dot products (no AVX512-BF16 / AMX,
e.g. AVX2-only hosts) oneDNN emulates 16-bit GEMMs: 5x slower than float32 here (19 vs 101 GFLOP/s,
128x576x1536). There prefill graphs upcast each weight and multiply in float32. The result equals a
native 16-bit GEMM up to summation order (both accumulate in float32 and round the output once).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PACK_OP = "onednn_packed_linear"
# Upcasting only pays off for real GEMMs: for a GEMV (lm_head on prefill's last token) converting the
# weight costs more than the emulated product.
UPCAST_MIN_ROWS = 16


def prepack_available(dtype: str, target: str) -> bool:
    # float32 only: oneDNN's bf16 reorder needs AVX512-BW/VL/DQ or AVX-NE-CONVERT, and is unverified here.
    return target == "cpu" and dtype == "float32" and torch.backends.mkldnn.is_available()


def native_low_precision_gemm(dtype: str) -> bool:
    """Whether this CPU multiplies `dtype` natively (oneDNN's own capability check)."""
    if dtype == "bfloat16":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == "float16":
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


def prefill_upcast_wanted(dtype: str, target: str) -> bool:
    return target == "cpu" and dtype in ("bfloat16", "float16") and not native_low_precision_gemm(dtype)


def pack(weight: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), batch)


class Linear(nn.Linear):
    """nn.Linear plus an optional packed copy of the weight (used while `packed_active` is set) and an
    optional float32 GEMM for 16-bit weights (while `upcast_active` is set)."""

    packed_active: bool = False
    upcast_active: bool = False

    def enable_packing(self, batch: int) -> None:
        self.pack_batch = batch
        # A dense placeholder at trace time (_linear_pointwise accepts both); the opaque oneDNN tensor
        # is bound at load.
        self.register_buffer("packed_weight", torch.zeros(self.out_features, self.in_features,
                                                          dtype=self.weight.dtype, device=self.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upcast_active and x.dtype != torch.float32 and x.numel() // self.in_features >= UPCAST_MIN_ROWS:
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)
        if not (self.packed_active and hasattr(self, "packed_weight")):
            return super().forward(x)
        flat = x.reshape(-1, self.in_features)
        # (input, weight, bias, post-op "none", its scalars, algorithm). The scalars are unused for "none";
        # [None] rather than [] because torch.export cannot serialize an empty list of unknown type.
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.bias, "none", [None], "")
        return out.view(*x.shape[:-1], self.out_features)
