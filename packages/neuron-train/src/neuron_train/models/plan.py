"""Per-parameter sharding plans: how a Hugging Face state dict maps onto TP shards, as data.

A plan maps a training-model parameter name (layer index written `*`) to a `ParamPlan`: the
partition dim (None = replicated), the HF tensors it is built from (several for fused tensors,
concatenated along the partition dim), and how each of those splits. `shard` and `unshard` are the
only functions that interpret a plan; loading and consolidation both go through them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

# even: equal contiguous chunks. q_heads: equal chunks of whole heads. kv_heads: equal chunks of
# whole heads while tp <= kv heads, else each rank holds one kv head, replicated tp/kv times.
SplitKind = Literal["even", "q_heads", "kv_heads"]


@dataclass(frozen=True, slots=True)
class ParamPlan:
    dim: int | None = None
    sources: tuple[str, ...] = ()  # HF names relative to the parent module; () means the same name
    kinds: tuple[SplitKind, ...] = ("even",)


@dataclass(frozen=True, slots=True)
class ShardContext:
    tp: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        if self.num_heads % self.tp != 0:
            raise ValueError(
                f"num_attention_heads={self.num_heads} is not divisible by tensor_parallel_size={self.tp}; "
                f"choose a tensor_parallel_size that divides {self.num_heads}."
            )
        kv, tp = self.num_kv_heads, self.tp
        if (kv >= tp and kv % tp != 0) or (kv < tp and tp % kv != 0):
            raise ValueError(
                f"num_key_value_heads={kv} and tensor_parallel_size={tp}: one must divide the other "
                "(kv heads are split when tp <= kv heads and replicated tp/kv times otherwise)."
            )

    @property
    def kv_replicas(self) -> int:
        return max(1, self.tp // self.num_kv_heads)

    def local_size(self, kind: SplitKind, full: int) -> int:
        if kind == "kv_heads" and self.tp > self.num_kv_heads:
            return self.head_dim
        if full % self.tp != 0:
            raise ValueError(f"a dimension of size {full} does not split over tensor_parallel_size={self.tp}.")
        return full // self.tp

    def slice_for(self, kind: SplitKind, full: int, rank: int) -> slice:
        n = self.local_size(kind, full)
        if kind == "kv_heads" and self.tp > self.num_kv_heads:
            head = rank // self.kv_replicas
            return slice(head * n, (head + 1) * n)
        return slice(rank * n, (rank + 1) * n)

    def owner_ranks(self, kind: SplitKind) -> range:
        """One rank per distinct shard (kv replicas hold copies)."""
        if kind == "kv_heads" and self.tp > self.num_kv_heads:
            return range(0, self.tp, self.kv_replicas)
        return range(self.tp)


_LAYER_INDEX = re.compile(r"\.\d+\.")


def plan_key(name: str) -> str:
    return _LAYER_INDEX.sub(".*.", name, count=1)


def lookup(plan: dict[str, ParamPlan], name: str) -> ParamPlan:
    key = plan_key(name)
    if key not in plan:
        raise KeyError(f"parameter {name!r} (plan key {key!r}) has no entry in the sharding plan; add one beside the model.")
    return plan[key]


def source_names(name: str, p: ParamPlan) -> list[str]:
    if not p.sources:
        return [name]
    parent = name.rsplit(".", 2)[0]
    return [f"{parent}.{s}" for s in p.sources]


def shard(full: list[torch.Tensor], p: ParamPlan, ctx: ShardContext, rank: int) -> torch.Tensor:
    """This rank's piece of the tensor built from `full` (one tensor per source)."""
    if p.dim is None:
        return full[0]
    kinds = p.kinds if len(p.kinds) == len(full) else p.kinds * len(full)
    pieces = [t.narrow(p.dim, sl.start, sl.stop - sl.start) for t, k in zip(full, kinds)
              for sl in [ctx.slice_for(k, t.shape[p.dim], rank)]]
    return torch.cat(pieces, dim=p.dim) if len(pieces) > 1 else pieces[0].clone()


def unshard(locals_: list[torch.Tensor], p: ParamPlan, ctx: ShardContext, full_sizes: list[int]) -> list[torch.Tensor]:
    """Inverse of `shard`: from every rank's piece back to one full tensor per source."""
    if p.dim is None:
        return [locals_[0]]
    kinds = p.kinds if len(p.kinds) == len(full_sizes) else p.kinds * len(full_sizes)
    seg = [ctx.local_size(k, n) for k, n in zip(kinds, full_sizes)]
    per_rank = [t.split(seg, dim=p.dim) for t in locals_]
    return [torch.cat([per_rank[r][i] for r in ctx.owner_ranks(k)], dim=p.dim) for i, k in enumerate(kinds)]
