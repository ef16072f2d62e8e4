"""A Linear that can run on weights pre-packed for the CPU's GEMV kernels.

Decode is a matrix-vector product per layer, bound by memory bandwidth; stock `F.linear` reaches
well under half of it on these CPUs, while MKL's packed GEMM (`mkl._mkl_linear`) streams the
weights about twice as fast (measured: 7 -> 14 GB/s on SmolLM2's layer shapes, fp32, 2 threads).

The packed layout is specific to the MKL build that produces it and cannot be moved in memory, so
it is never stored: the graph takes `packed_weight` as a constant, the artifact records how to
derive it (`weights.derived`), and the runtime packs the stored weight at load. Prefill graphs
keep the stock path (compute-bound, and packing is per batch size).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

PACK_OP = "mkl_packed_linear"


def prepack_available(dtype: str, target: str) -> bool:
    return target == "cpu" and dtype == "float32" and bool(torch._C.has_mkl)


@cache
def packed_shape(out_features: int, in_features: int, batch: int) -> tuple[int, ...]:
    return tuple(torch.ops.mkl._mkl_reorder_linear_weight(torch.zeros(out_features, in_features, device="cpu"), batch).shape)


def pack(weight: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.ops.mkl._mkl_reorder_linear_weight(weight.contiguous(), batch)


class Linear(nn.Linear):
    """nn.Linear plus an optional packed copy of the weight, used while `packed_active` is set."""

    packed_active: bool = False

    def enable_packing(self, batch: int) -> None:
        self.pack_batch = batch
        # Only the shape matters at trace time: the real packed tensor is bound at load.
        shape = packed_shape(self.out_features, self.in_features, batch)
        self.register_buffer("packed_weight", torch.zeros(shape, device=self.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.packed_active and hasattr(self, "packed_weight")):
            return super().forward(x)
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.mkl._mkl_linear(flat, self.packed_weight, self.weight, self.bias, self.pack_batch)
        return out.view(*x.shape[:-1], self.out_features)
