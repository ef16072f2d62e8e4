"""Qwen3 = Llama + RMSNorm over each query and key head (before RoPE).

The per-head norm weights (head_dim,) are replicated on every TP rank, but each rank normalises only
its own heads, so their gradients are partial and get summed over TP.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from neuron_train.models.llama import LLAMA_PLAN, LlamaAttention, LlamaForTraining, RMSNorm
from neuron_train.models.plan import ParamPlan, ShardContext
from neuron_train.parallel.dims import ParallelDims

QWEN3_PLAN: dict[str, ParamPlan] = {
    **LLAMA_PLAN,
    "model.layers.*.self_attn.q_norm.weight": ParamPlan(),
    "model.layers.*.self_attn.k_norm.weight": ParamPlan(),
}


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: PretrainedConfig, dims: ParallelDims, ctx: ShardContext, sp: bool) -> None:
        super().__init__(config, dims, ctx, sp)
        if getattr(config, "use_sliding_window", False):
            raise ValueError("use_sliding_window=True is not supported for training; set it to False in config.json.")
        self.q_norm = RMSNorm(ctx.head_dim, config.rms_norm_eps, partial_grad=True)
        self.k_norm = RMSNorm(ctx.head_dim, config.rms_norm_eps, partial_grad=True)

    def qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)


class Qwen3ForTraining(LlamaForTraining):
    PLAN = QWEN3_PLAN
    attention_cls = Qwen3Attention
