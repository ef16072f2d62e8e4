"""From TP shards back to one Hugging Face state dict (consolidation, tests, adapter export)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from transformers import PretrainedConfig

from neuron_train.models.derive import describe
from neuron_train.models.plan import ParamPlan, ShardContext, disassemble, full_sizes, lookup, unshard
from neuron_train.parallel.dims import ParallelDims


def shard_context(config: PretrainedConfig, tp: int) -> ShardContext:
    _, arch = describe(config)
    return ShardContext(tp, arch.num_heads, arch.num_kv_heads, arch.head_dim)


def local_base_tensors(model: nn.Module, *, grads: bool = False) -> dict[str, torch.Tensor]:
    """This rank's base (non-LoRA) parameters, or their gradients, by training-model name."""
    out = {}
    for name, p in model.named_parameters():
        if ".lora." in name:
            continue
        t = p.grad if grads else p
        out[name] = (torch.zeros_like(p) if t is None else t).detach()
    return out


def merge_shards(shards: list[dict[str, torch.Tensor]], plan: dict[str, ParamPlan], config: PretrainedConfig) -> dict[str, torch.Tensor]:
    """Full HF checkpoint tensors (per-expert for MoE) from the per-TP-rank dicts (`shards[r]` is rank r's)."""
    _, arch = describe(config)
    ctx = ShardContext(len(shards), arch.num_heads, arch.num_kv_heads, arch.head_dim)
    out: dict[str, torch.Tensor] = {}
    for name in shards[0]:
        p = lookup(plan, name)
        locals_ = [sh[name] for sh in shards]
        segments = unshard(locals_, p, ctx, full_sizes(p, locals_[0], ctx))
        full = torch.cat(segments, dim=p.dim) if len(segments) > 1 else segments[0]
        out.update(disassemble(full, name, p, arch.num_experts))
    return out


def gather_tp(local: dict[str, torch.Tensor], dims: ParallelDims) -> list[dict[str, torch.Tensor]]:
    """Every TP rank's version of `local` (same keys and shapes on every rank), on every TP rank."""
    if dims.tp == 1:
        return [local]
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(dims.tp)]
    for name, t in local.items():
        parts = [torch.empty_like(t) for _ in range(dims.tp)]
        dist.all_gather(parts, t.contiguous(), group=dims.tp_group)
        for r in range(dims.tp):
            shards[r][name] = parts[r]
    return shards


def full_hf_state_dict(model: nn.Module, *, grads: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded HF state dict (or gradients) of a training model; collective over TP."""
    shards = gather_tp(local_base_tensors(model, grads=grads), model.dims)
    return merge_shards(shards, model.PLAN, model.config)
