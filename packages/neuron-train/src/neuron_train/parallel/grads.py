"""Gradient synchronisation and clipping for tp x dp.

After backward, three sums make every rank's gradient the full-batch gradient of its shard:
1. parameters whose TP copies saw only part of the work (`nt_tp_partial_grad`): sum over TP;
2. kv-head rows replicated on several TP ranks (`nt_kv_rows`): sum over the replica group;
3. everything trainable: sum over DP (the loss is already divided by the global token count).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from neuron_train.parallel.comm import all_reduce_
from neuron_train.parallel.dims import ParallelDims

_BUCKET_ELEMS = 16 * 1024 * 1024  # ~64 MB of fp32 per all-reduce


def _bucketed_all_reduce(grads: list[torch.Tensor], group) -> None:
    bucket: list[torch.Tensor] = []
    size = 0
    for g in [*grads, None]:
        if g is not None:
            bucket.append(g)
            size += g.numel()
        if bucket and (g is None or size >= _BUCKET_ELEMS):
            flat = _flatten_dense_tensors(bucket)
            all_reduce_(flat, group)
            for dst, src in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                dst.copy_(src)
            bucket, size = [], 0


@torch.no_grad()
def sync_gradients(model: nn.Module, dims: ParallelDims) -> None:
    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    if dims.tp > 1:
        _bucketed_all_reduce([p.grad for p in params if getattr(p, "nt_tp_partial_grad", False)], dims.tp_group)
        for p in params:
            kv = getattr(p, "nt_kv_rows", None)
            if kv is not None:
                start, group, _ = kv
                rows = p.grad[start:]  # contiguous: a tail of dim 0
                all_reduce_(rows, group)
    if dims.dp > 1:
        _bucketed_all_reduce([p.grad for p in params], dims.dp_group)


@torch.no_grad()
def grad_norm(params: Iterable[nn.Parameter], dims: ParallelDims) -> torch.Tensor:
    """Global L2 norm of the unsharded gradient: copies held by several TP ranks count once."""
    params = list(params)
    total = torch.zeros((), dtype=torch.float64, device=params[0].device if params else None)
    def sq(t: torch.Tensor) -> torch.Tensor:  # per-tensor norm in the grad's dtype, summed in fp64
        return torch.linalg.vector_norm(t).double() ** 2

    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        if getattr(p, "nt_tp_replicated", False):
            total += sq(g) / dims.tp
            continue
        kv = getattr(p, "nt_kv_rows", None)
        if kv is not None:
            start, _, rep = kv
            total += sq(g[:start]) + sq(g[start:]) / rep
        else:
            total += sq(g)
    all_reduce_(total, dims.tp_group)
    return total.sqrt().float()


@torch.no_grad()
def clip_grad_norm_(params: list[nn.Parameter], dims: ParallelDims, max_norm: float) -> torch.Tensor:
    norm = grad_norm(params, dims)
    if max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)
    return norm
