"""Autograd-correct collectives for tensor- and sequence-parallel regions.

Each op is a forward/backward pair (Megatron-style conjugates):

| op                   | forward                          | backward                          |
|----------------------|----------------------------------|-----------------------------------|
| copy_to_tp           | identity                         | all-reduce over TP                |
| reduce_from_tp       | all-reduce over TP               | identity                          |
| gather_from_tp       | all-gather along the last dim    | keep this rank's slice            |
| scatter_to_tp        | keep this rank's last-dim slice  | all-gather along the last dim     |
| gather_from_sp       | all-gather along the sequence    | reduce-scatter along the sequence |
| reduce_scatter_to_sp | reduce-scatter along the sequence| all-gather along the sequence     |
| scatter_to_sp        | keep this rank's sequence slice  | all-gather along the sequence     |

Activations are (batch, seq, hidden); the sequence dim is 1. A `None` group means size 1 and every
op is the identity, so models run unchanged in a single process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

SEQ_DIM = 1


def _size(group: dist.ProcessGroup | None) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _rank(group: dist.ProcessGroup | None) -> int:
    return 0 if group is None else dist.get_rank(group)


def _all_reduce(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    if _size(group) == 1:
        return x
    x = x.contiguous().clone()
    dist.all_reduce(x, group=group)
    return x


def _all_gather(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    n = _size(group)
    if n == 1:
        return x
    # Gather along dim 0 into one buffer (one collective), then move the pieces to `dim`.
    x = x.movedim(dim, 0).contiguous()
    out = torch.empty((n * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x, group=group)
    return out.movedim(0, dim)


def _split(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    n = _size(group)
    if n == 1:
        return x
    if x.shape[dim] % n != 0:
        raise ValueError(
            f"dimension {dim} of size {x.shape[dim]} does not split evenly over {n} ranks; "
            f"pad the sequence to a multiple of {n} (the collator's pad_to_multiple_of does this)."
        )
    return x.chunk(n, dim=dim)[_rank(group)].contiguous()


def _reduce_scatter(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    n = _size(group)
    if n == 1:
        return x
    if x.shape[dim] % n != 0:
        raise ValueError(
            f"dimension {dim} of size {x.shape[dim]} does not split evenly over {n} ranks; "
            f"pad the sequence to a multiple of {n}."
        )
    x = x.movedim(dim, 0).contiguous()
    out = torch.empty((x.shape[0] // n, *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.reduce_scatter_tensor(out, x, group=group)
    return out.movedim(0, dim)


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        return _all_reduce(g, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather(x, -1, group)

    @staticmethod
    def backward(ctx, g):
        return _split(g, -1, ctx.group), None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split(x, -1, group)

    @staticmethod
    def backward(ctx, g):
        return _all_gather(g, -1, ctx.group), None


class _GatherFromSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx, g):
        return _reduce_scatter(g, SEQ_DIM, ctx.group), None


class _ReduceScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx, g):
        return _all_gather(g, SEQ_DIM, ctx.group), None


class _ScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx, g):
        return _all_gather(g, SEQ_DIM, ctx.group), None


def copy_to_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return x if _size(group) == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return x if _size(group) == 1 else _ReduceFromTP.apply(x, group)


def gather_from_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return x if _size(group) == 1 else _GatherFromTP.apply(x, group)


def scatter_to_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return x if _size(group) == 1 else _ScatterToTP.apply(x, group)


def gather_from_sp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return x if _size(group) == 1 else _GatherFromSP.apply(x, group)


def reduce_scatter_to_sp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return x if _size(group) == 1 else _ReduceScatterToSP.apply(x, group)


def scatter_to_sp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return x if _size(group) == 1 else _ScatterToSP.apply(x, group)


def all_reduce_(x: torch.Tensor, group: dist.ProcessGroup | None, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> None:
    """In-place, non-autograd all-reduce (gradients, statistics)."""
    if _size(group) > 1:
        dist.all_reduce(x, op=op, group=group)
