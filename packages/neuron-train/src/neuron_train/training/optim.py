"""AdamW over the trainable parameters, optionally ZeRO-1 sharded over data-parallel ranks."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from transformers import get_scheduler

from neuron_train.parallel.dims import ParallelDims
from neuron_train.training.args import NeuronTrainingArguments


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices, not biases or norm weights (transformers.Trainer's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, args: NeuronTrainingArguments, dims: ParallelDims) -> torch.optim.Optimizer:
    groups = param_groups(model, args.weight_decay)
    params = [p for g in groups for p in g["params"]]
    # The fused kernel (CPU and CUDA, float params) is what transformers.Trainer uses by default.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    kwargs = dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, fused=fused)
    if args.zero_1 and dims.dp > 1:
        # Each DP rank keeps Adam moments for its share of this TP rank's parameters and broadcasts
        # the updated values after step(): optimizer memory / dp, gradients still all-reduced.
        opt = ZeroRedundancyOptimizer(groups[0]["params"], optimizer_class=torch.optim.AdamW,
                                      process_group=dims.dp_group, weight_decay=groups[0]["weight_decay"], **kwargs)
        for g in groups[1:]:
            opt.add_param_group(g)
        return opt
    return torch.optim.AdamW(groups, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, args: NeuronTrainingArguments, total_steps: int):
    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=total_steps)
