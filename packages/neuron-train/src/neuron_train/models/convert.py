"""From TP shards back to one Hugging Face state dict (consolidation, tests, adapter export)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from neuron_train.models.plan import ParamPlan, ShardContext, lookup, source_names
from neuron_train.models.plan import unshard as unshard_plan
from neuron_train.parallel.dims import ParallelDims


def shard_context(config: PretrainedConfig, tp: int) -> ShardContext:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return ShardContext(tp, config.num_attention_heads, config.num_key_value_heads, head_dim)


def hf_shapes(config: PretrainedConfig) -> dict[str, torch.Size]:
    """Shapes of every tensor in the HF model, from a meta-device instance (no memory, no weights)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {k: v.shape for k, v in model.state_dict().items()}


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
    """Full HF tensors from the per-TP-rank dicts (`shards[r]` is rank r's)."""
    ctx = shard_context(config, len(shards))
    shapes = hf_shapes(config)
    out: dict[str, torch.Tensor] = {}
    for name in shards[0]:
        p = lookup(plan, name)
        srcs = source_names(name, p)
        sizes = [shapes[s][p.dim] for s in srcs] if p.dim is not None else [0]
        for s, t in zip(srcs, unshard_plan([sh[name] for sh in shards], p, ctx, sizes)):
            out[s] = t.contiguous()
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
