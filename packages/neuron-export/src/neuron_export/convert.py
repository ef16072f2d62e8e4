"""Hugging Face checkpoint -> the static decoder's parameters, and the tensor-parallel plan.

Conversion fuses q/k/v and gate/up (as listed in each architecture's CHECKPOINT data), resolves
tied embeddings to one tensor plus an alias, and casts to the compile dtype.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from neuron_cache.arch.checkpoint import per_expert, source_groups
from neuron_cache.arch.llama import Llama
from neuron_cache.config import SHARD_LAYOUTS
from neuron_export.errors import MissingWeightsError
from neuron_export.models.decoder import DecoderModel

_LAYER = re.compile(r"^layers\.(\d+)\.")


def _template(name: str) -> tuple[str, dict[str, str]]:
    match = _LAYER.match(name)
    if match is None:
        return name, {}
    return _LAYER.sub("layers.{i}.", name, count=1), {"i": match.group(1)}


def parameter_names(model: DecoderModel) -> list[str]:
    """Parameters the graphs need bound, each tensor once (tied weights appear under one name)."""
    return [n for n, _ in model.named_parameters()]


def tied_aliases(model: DecoderModel) -> dict[str, str]:
    """Alias name -> canonical name, for parameters shared between modules (tied embeddings)."""
    canonical: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in canonical:
            aliases[name] = canonical[id(p)]
        else:
            canonical[id(p)] = name
    return aliases


def convert_checkpoint(
    family: type[Llama], model: DecoderModel, hf_state: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Our parameter name -> tensor, built from `hf_state` by the family's CHECKPOINT plan."""
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for name in parameter_names(model):
        template, fmt = _template(name)
        if template not in family.CHECKPOINT:
            raise KeyError(f"{family.__name__}.CHECKPOINT has no entry for parameter template '{template}'")
        plan = family.CHECKPOINT[template]
        groups = source_groups(plan, model.arch.num_experts, fmt.get("i"))
        sources = [s for group in groups for s in group]
        absent = [s for s in sources if s not in hf_state]
        if absent:
            missing.extend(absent)
            continue
        fused = [torch.cat([hf_state[s] for s in group], dim=0) if len(group) > 1 else hf_state[group[0]]
                 for group in groups]
        tensor = torch.stack(fused) if per_expert(plan) else fused[0]
        expected = tuple(model.get_parameter(name).shape)
        if tuple(tensor.shape) != expected:
            shown = sources if len(sources) <= 3 else [*sources[:3], f"... ({len(sources)} in all)"]
            raise MissingWeightsError(
                f"checkpoint tensor(s) {shown} have shape {tuple(tensor.shape)}, but the config implies "
                f"{expected} for '{name}': the checkpoint does not match its config.json"
            )
        out[name] = tensor.detach().to(dtype).contiguous()
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MissingWeightsError(
            f"the checkpoint lacks {len(missing)} tensor(s) the {family.__name__} architecture needs: {shown}. "
            "Check that the model directory holds all its *.safetensors shards."
        )
    return out


def sharding_plan(family: type[Llama], model: DecoderModel) -> dict[str, dict]:
    """Our parameter name -> neuron_cache ShardSpec fields: partition_dim, segments, granule, layout."""
    plan = {}
    for name in parameter_names(model):
        template, _ = _template(name)
        dim, rule = family.SHARDING.get(template, (None, None))
        layout = rule if rule in SHARD_LAYOUTS else None
        plan[name] = {"partition_dim": dim, "segments": None if layout else family.segments(rule, model.arch),
                      "granule": family.granule(template, model.arch), "replicable": family.replicable(rule),
                      "layout": layout, "expert_dim": family.expert_dim(template)}
    return plan


def shard(
    tensor: torch.Tensor, partition_dim: int | None, segments: list[int] | None, tp: int, granule: int | None = None,
    layout: str | None = None, replicable: list[bool] | None = None, expert_dim: int | None = None, ep: int = 1,
) -> list[torch.Tensor]:
    """Split one parameter across `tp` ranks; each fused segment is split separately, in whole granules.

    A segment marked `replicable` (kv heads) with fewer granules than ranks is replicated instead: rank r holds
    granule r // (tp / granules), the one its q heads attend to. Any other split of a granule is refused. `layout` (neuron_cache SHARD_LAYOUTS):
    "vocab" pads the rows to tp * ceil(rows / tp) and gives every rank one extra zero row; "partial" gives
    rank 0 the tensor and the others zeros. See models/parallel.py.
    """
    if layout == "partial":
        return [tensor] + [torch.zeros_like(tensor) for _ in range(tp - 1)]
    if expert_dim is not None and ep > 1:  # expert parallelism: group g (ranks g*tp/ep..) holds the g-th 1/ep experts
        if tensor.shape[expert_dim] % ep or tp % ep:
            raise ValueError(f"cannot split {tensor.shape[expert_dim]} experts into expert_parallel_size={ep} groups of "
                             f"tensor_parallel_size={tp}; choose an --expert_parallel_size that divides both")
        return [part for group in tensor.chunk(ep, dim=expert_dim)
                for part in shard(group, partition_dim, segments, tp // ep, granule, layout, replicable)]
    if partition_dim is None:
        return [tensor] * tp
    if layout == "vocab":
        rows = -(-tensor.shape[0] // tp)
        padded = torch.cat([tensor, tensor.new_zeros(rows * tp - tensor.shape[0] + 1, *tensor.shape[1:])])
        zero = padded[-1:]
        return [torch.cat([padded[r * rows:(r + 1) * rows], zero]) for r in range(tp)]
    parts = list(tensor.split(segments, dim=partition_dim)) if segments else [tensor]
    replicable = replicable or [False] * len(parts)
    per_part = [_split_segment(part, partition_dim, tp, granule, rep) for part, rep in zip(parts, replicable)]
    return [torch.cat([chunks[r] for chunks in per_part], dim=partition_dim) for r in range(tp)]


def _split_segment(part: torch.Tensor, dim: int, tp: int, granule: int | None, replicable: bool) -> list[torch.Tensor]:
    size = part.shape[dim]
    if size % tp == 0 and not (granule and (size // tp) % granule):
        return list(part.chunk(tp, dim=dim))
    units = size // granule if granule and size % granule == 0 else None
    if replicable and units and tp % units == 0:  # replication: each granule on tp / units consecutive ranks
        return [part.narrow(dim, (r // (tp // units)) * granule, granule) for r in range(tp)]
    unit = f" in whole heads of {granule}" if granule else ""
    raise ValueError(
        f"cannot shard a size-{size} segment along dim {dim} over tensor_parallel_size={tp}{unit}; "
        "choose a tensor_parallel_size that divides it (or, for kv heads, one it divides)"
    )


def unshard(shards: list[torch.Tensor], partition_dim: int | None, segments: list[int] | None,
            layout: str | None = None, size: int | None = None) -> torch.Tensor:
    """The inverse of `shard` (`size`: the original rows, for layout "vocab"). Replicated kv heads are not
    supported here: nothing consolidates an inference artifact's shards."""
    if partition_dim is None or layout == "partial":
        return shards[0]
    tp = len(shards)
    if layout == "vocab":
        return torch.cat([s[:-1] for s in shards])[:size]
    if not segments:
        return torch.cat(shards, dim=partition_dim)
    per_rank = [s // tp for s in segments]
    pieces = [list(s.split(per_rank, dim=partition_dim)) for s in shards]
    return torch.cat([torch.cat([p[j] for p in pieces], dim=partition_dim) for j in range(len(segments))], partition_dim)


def rank_weights(tensors: dict[str, torch.Tensor], plan: dict[str, dict], tp: int, rank: int,
                 ep: int = 1) -> dict[str, torch.Tensor]:
    """`rank`'s share of every tensor the graphs bind (parameters by the plan; buffers replicated)."""
    out = {}
    for name, tensor in tensors.items():
        spec = plan.get(name, {})
        out[name] = shard(tensor, spec.get("partition_dim"), spec.get("segments"), tp, spec.get("granule"),
                          spec.get("layout"), spec.get("replicable"), spec.get("expert_dim"), ep)[rank].contiguous()
    return out
