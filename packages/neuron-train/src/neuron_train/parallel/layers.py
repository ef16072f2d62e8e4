"""Tensor-parallel layers: ColumnParallelLinear, RowParallelLinear, ParallelEmbedding.

Shapes follow neuronx-distributed: a column-parallel weight is (out/tp, in), partition dim 0; a
row-parallel weight is (out, in/tp), partition dim 1; the embedding is split along the vocabulary
(dim 0). With sequence parallelism, activations outside TP regions are sequence shards: the region
entry all-gathers the sequence and the exit reduce-scatters it (instead of all-reduce).

Parameters that every TP rank holds whole carry `nt_tp_replicated = True`; when each rank only sees
part of their gradient (sequence shards, per-head norms, replicated LoRA factors) they also carry
`nt_tp_partial_grad = True` and parallel/grads.py sums that gradient over the TP group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuron_train.parallel.comm import (
    copy_to_tp,
    gather_from_sp,
    gather_from_tp,
    reduce_from_tp,
    reduce_scatter_to_sp,
    scatter_to_tp,
)
from neuron_train.parallel.dims import ParallelDims


def mark_replicated(p: nn.Parameter, partial_grad: bool) -> nn.Parameter:
    p.nt_tp_replicated = True  # type: ignore[attr-defined]
    p.nt_tp_partial_grad = partial_grad  # type: ignore[attr-defined]
    return p


def split_evenly(size: int, tp: int, what: str) -> int:
    if size % tp != 0:
        raise ValueError(
            f"{what}={size} is not divisible by tensor_parallel_size={tp}; choose a tensor_parallel_size that divides it."
        )
    return size // tp


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W split along its output rows; output stays sharded unless gather_output."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        dims: ParallelDims,
        bias: bool = False,
        gather_output: bool = False,
        sequence_parallel: bool = False,
        local_out_features: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.local_out_features = local_out_features or split_evenly(out_features, dims.tp, "out_features")
        self.group = dims.tp_group
        self.gather_output, self.sequence_parallel = gather_output, sequence_parallel
        self.weight = nn.Parameter(torch.empty(self.local_out_features, in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(self.local_out_features, dtype=dtype)) if bias else None
        self.lora: nn.Module | None = None  # set by neuron_train.lora.inject_lora

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gather_from_sp(x, self.group) if self.sequence_parallel else copy_to_tp(x, self.group)
        y = F.linear(x, self.weight, self.bias)
        if self.lora is not None:
            y = y + self.lora(x)
        return gather_from_tp(y, self.group) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W split along its input columns; partial sums reduced over TP."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        dims: ParallelDims,
        bias: bool = False,
        input_is_parallel: bool = True,
        sequence_parallel: bool = False,
        local_in_features: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.local_in_features = local_in_features or split_evenly(in_features, dims.tp, "in_features")
        self.group = dims.tp_group
        self.input_is_parallel, self.sequence_parallel = input_is_parallel, sequence_parallel
        self.weight = nn.Parameter(torch.empty(out_features, self.local_in_features, dtype=dtype))
        # The bias is added once, after the reduction; under SP each rank adds it to its own sequence
        # shard, so its gradient is partial.
        self.bias = mark_replicated(nn.Parameter(torch.zeros(out_features, dtype=dtype)), sequence_parallel) if bias else None
        self.lora: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tp(x, self.group)
        y = F.linear(x, self.weight)
        if self.lora is not None:
            # x B A summed over ranks equals the unsharded LoRA product, so it joins the reduction.
            y = y + self.lora(x)
        y = reduce_scatter_to_sp(y, self.group) if self.sequence_parallel else reduce_from_tp(y, self.group)
        return y + self.bias if self.bias is not None else y


class ParallelEmbedding(nn.Module):
    """Vocabulary-parallel embedding: each rank holds rows [start, end) and zeroes the rest."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        dims: ParallelDims,
        sequence_parallel: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        local = split_evenly(num_embeddings, dims.tp, "vocab_size")
        self.vocab_start, self.vocab_end = dims.tp_rank * local, (dims.tp_rank + 1) * local
        self.group, self.sequence_parallel = dims.tp_group, sequence_parallel
        self.weight = nn.Parameter(torch.empty(local, embedding_dim, dtype=dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.group is None:
            return F.embedding(ids, self.weight)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local_ids = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_scatter_to_sp(out, self.group) if self.sequence_parallel else reduce_from_tp(out, self.group)
