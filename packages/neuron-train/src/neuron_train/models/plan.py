"""Per-parameter sharding plans: how a Hugging Face state dict maps onto TP shards, as data.

A plan maps a training-model parameter name (layer index written `{i}`) to a `ParamPlan`: the
partition dim (None = replicated), the HF checkpoint tensors it is built from (concatenated on dim 0;
a source holding `{j}` is read per expert and the experts stacked on a new dim 0), the fused
segments along the partition dim and how each of those splits. Plans are derived from the shared
architecture description (derive.py); `assemble`/`disassemble` (checkpoint <-> full tensor) and
`shard`/`unshard` (full segments <-> rank pieces) are the only functions that interpret one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from neuron_cache.arch.checkpoint import per_expert, source_groups

# even: equal contiguous chunks. q_heads: equal chunks of whole heads. kv_heads: equal chunks of
# whole heads while tp <= kv heads, else each rank holds one kv head, replicated tp/kv times.
SplitKind = Literal["even", "q_heads", "kv_heads"]


@dataclass(frozen=True, slots=True)
class ParamPlan:
    dim: int | None = None
    sources: tuple[str, ...] = ()  # HF checkpoint name templates ({i}: layer, {j}: expert)
    kinds: tuple[SplitKind, ...] = ("even",)  # one per segment, or one for all
    segments: tuple[int, ...] = ()  # full sizes of the fused segments along `dim`; (): one segment


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


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def plan_key(name: str) -> str:
    return _LAYER_INDEX.sub(".{i}.", name, count=1)


def layer_of(name: str) -> int | None:
    found = _LAYER_INDEX.search(name)
    return int(found.group(1)) if found else None


def lookup(plan: dict[str, ParamPlan], name: str) -> ParamPlan:
    key = plan_key(name)
    if key not in plan:
        raise KeyError(
            f"parameter {name!r} (plan key {key!r}) has no entry in the architecture's CHECKPOINT map; add one to "
            "its neuron_cache.arch description."
        )
    return plan[key]


def source_names(name: str, p: ParamPlan, num_experts: int = 0) -> list[str]:
    """The checkpoint tensors `name` is built from, in order (expert-major for stacked experts)."""
    return [s for group in source_groups(p.sources, num_experts, layer_of(name)) for s in group]


def assemble(tensors: dict[str, torch.Tensor], name: str, p: ParamPlan, num_experts: int = 0) -> torch.Tensor:
    """The full (unsharded) tensor of `name` out of checkpoint tensors."""
    fused = [torch.cat([tensors[n] for n in group]) if len(group) > 1 else tensors[group[0]]
             for group in source_groups(p.sources, num_experts, layer_of(name))]
    return torch.stack(fused) if per_expert(p.sources) else fused[0]


def disassemble(full: torch.Tensor, name: str, p: ParamPlan, num_experts: int = 0) -> dict[str, torch.Tensor]:
    """Inverse of `assemble`: checkpoint tensors by name."""
    names = source_names(name, p, num_experts)
    k = len(p.sources)
    out = {}
    for e, t in enumerate(full.unbind(0) if per_expert(p.sources) else [full]):
        parts = [t] if k == 1 else t.split(_source_sizes(name, p, t.shape[0]), dim=0)
        out.update({n: x.contiguous() for n, x in zip(names[e * k:(e + 1) * k], parts)})
    return out


def _source_sizes(name: str, p: ParamPlan, total: int) -> list[int]:
    # Fused sources are the sharding segments themselves (q/k/v, gate/up): the checkpoint map and the
    # sharding plan describe the same fusion, so the segment sizes split the sources apart again.
    if len(p.segments) == len(p.sources) and sum(p.segments) == total:
        return list(p.segments)
    raise ValueError(
        f"{name}: its {len(p.sources)} checkpoint sources {p.sources} cannot be split back from a tensor of size "
        f"{total}: the SHARDING rule's segments are {p.segments}; give the rule one segment per source in the "
        "architecture description."
    )


def split_segments(full: torch.Tensor, p: ParamPlan) -> list[torch.Tensor]:
    return list(full.split(list(p.segments), dim=p.dim)) if p.segments and p.dim is not None else [full]


def full_sizes(p: ParamPlan, local: torch.Tensor, ctx: ShardContext) -> list[int]:
    """Full segment sizes along p.dim, for `unshard`."""
    if p.segments:
        return list(p.segments)
    if p.dim is None:
        return [0]
    return [local.shape[p.dim] * ctx.tp]


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
