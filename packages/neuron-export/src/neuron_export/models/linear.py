"""A Linear that can run on weights pre-packed for the CPU's GEMV kernels.

Decode is a matrix-vector product per layer, bound by memory bandwidth; stock `F.linear` reaches
well under half of it on these CPUs, while MKL's packed GEMM (`mkl._mkl_linear`) streams the
weights about twice as fast (measured: 7 -> 14 GB/s on SmolLM2's layer shapes, fp32, 2 threads).

The packed layout is specific to the MKL build that produces it and cannot be moved in memory, so
it is never stored: the graph takes `packed_weight` as a constant, the artifact records how to
derive it (`weights.derived`), and the runtime packs the stored weight at load. Prefill graphs
keep the stock path (compute-bound, and packing is per batch size).

Prefill is compute-bound, and on CPUs without native bf16/fp16 dot products (no AVX512-BF16 / AMX,
e.g. AVX2-only hosts) oneDNN emulates 16-bit GEMMs: 5x slower than float32 here (19 vs 101 GFLOP/s,
128x576x1536). There prefill graphs upcast each weight and multiply in float32. The result equals a
native 16-bit GEMM up to summation order (both accumulate in float32 and round the output once).
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

PACK_OP = "mkl_packed_linear"
# Upcasting only pays off for real GEMMs: for a GEMV (lm_head on prefill's last token) converting the
# weight costs more than the emulated product.
UPCAST_MIN_ROWS = 16


def prepack_available(dtype: str, target: str) -> bool:
    return target == "cpu" and dtype == "float32" and bool(torch._C.has_mkl)


@cache
def native_low_precision_gemm(dtype: str) -> bool:
    """Whether this CPU multiplies `dtype` natively (oneDNN's own capability check)."""
    if dtype == "bfloat16":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == "float16":
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


def prefill_upcast_wanted(dtype: str, target: str) -> bool:
    return target == "cpu" and dtype in ("bfloat16", "float16") and not native_low_precision_gemm(dtype)


@cache
def packed_shape(out_features: int, in_features: int, batch: int) -> tuple[int, ...]:
    return tuple(torch.ops.mkl._mkl_reorder_linear_weight(torch.zeros(out_features, in_features, device="cpu"), batch).shape)


def pack(weight: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.ops.mkl._mkl_reorder_linear_weight(weight.contiguous(), batch)


class Linear(nn.Linear):
    """nn.Linear plus an optional packed copy of the weight (used while `packed_active` is set) and an
    optional float32 GEMM for 16-bit weights (while `upcast_active` is set)."""

    packed_active: bool = False
    upcast_active: bool = False

    def enable_packing(self, batch: int) -> None:
        self.pack_batch = batch
        # Only the shape matters at trace time: the real packed tensor is bound at load.
        shape = packed_shape(self.out_features, self.in_features, batch)
        self.register_buffer("packed_weight", torch.zeros(shape, device=self.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upcast_active and x.dtype != torch.float32 and x.numel() // self.in_features >= UPCAST_MIN_ROWS:
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)
        if not (self.packed_active and hasattr(self, "packed_weight")):
            return super().forward(x)
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.mkl._mkl_linear(flat, self.packed_weight, self.weight, self.bias, self.pack_batch)
        return out.view(*x.shape[:-1], self.out_features)
