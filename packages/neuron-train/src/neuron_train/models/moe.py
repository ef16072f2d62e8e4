"""Routed experts for tensor-parallel training (qwen3_moe, mixtral), and the router load-balancing loss.

Routing is transformers 5.19's Qwen3MoeSparseMoeBlock: softmax in fp32, top-k, renormalised iff
norm_topk_prob, weights cast back to the logits' dtype (mixtral, `routing_weights_fp32`: kept in fp32, the product
cast). Only the selected experts run for each token.

Tensor parallelism: the router is replicated and sees the replicated hidden state, so every rank routes
identically. Each expert is split by its hidden dimension like the dense MLP: a rank holds a column slice
of every expert's gate/up and the matching row slice of its down projection, and the per-rank partial
outputs are summed over TP as in RowParallelLinear. Gradients: the routing weights scale a *partial*
output, so their gradient on one rank is partial; `copy_to_tp` sums it over TP in backward, which makes
the router's gradient whole (and identical) on every rank, so the router weight is replicated without a
gradient reduction. Sequence parallelism is refused for MoE (the router would see a sequence shard).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from neuron_cache.arch import DecoderArch
from neuron_train.parallel.comm import copy_to_tp, reduce_from_tp
from neuron_train.parallel.dims import ParallelDims
from neuron_train.parallel.layers import mark_replicated, split_evenly


class Router(nn.Module):
    def __init__(self, arch: DecoderArch) -> None:
        super().__init__()
        self.weight = mark_replicated(nn.Parameter(torch.empty(arch.num_experts, arch.hidden_size)), partial_grad=False)
        self.top_k, self.norm_topk_prob = arch.num_experts_per_tok, arch.norm_topk_prob
        self.weights_fp32 = arch.routing_weights_fp32  # mixtral scales expert outputs by fp32 weights, then casts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = F.linear(x, self.weight)  # (N, E)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)  # (N, k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights if self.weights_fp32 else weights.to(logits.dtype), experts


class Experts(nn.Module):
    """Every expert's gate/up (E, 2 I/tp, H) and down (E, H, I/tp) slices on this rank."""

    def __init__(self, arch: DecoderArch, dims: ParallelDims) -> None:
        super().__init__()
        e, h = arch.num_experts, arch.hidden_size
        local = split_evenly(arch.expert_intermediate_size, dims.tp, "moe_intermediate_size")
        self.num_experts = e
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * local, h))  # [gate slice; up slice] per expert
        self.down_proj = nn.Parameter(torch.empty(e, h, local))
        self.act = ACT2FN[arch.hidden_act]

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (N, H), experts/weights (N, k) -> this rank's partial sum (N, H)."""
        out = torch.zeros_like(x)
        with torch.no_grad():
            mask = F.one_hot(experts, self.num_experts).permute(2, 1, 0)  # (E, k, N)
            hit = mask.sum(dim=(1, 2)).nonzero().flatten().tolist()
        for e in hit:
            slot, token = torch.where(mask[e])
            gate, up = F.linear(x[token], self.gate_up_proj[e]).chunk(2, dim=-1)
            y = F.linear(self.act(gate) * up, self.down_proj[e]) * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


class MoE(nn.Module):
    def __init__(self, arch: DecoderArch, dims: ParallelDims) -> None:
        super().__init__()
        self.router = Router(arch)
        self.experts = Experts(arch, dims)
        self.group = dims.tp_group

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H) replicated -> (output (B, T, H), router logits (B*T, E))."""
        b, t, h = x.shape
        flat = x.reshape(-1, h)
        logits, weights, experts = self.router(flat)
        # copy_to_tp: identity forward, gradient summed over TP (each rank's expert slices see partial sums).
        partial = self.experts(copy_to_tp(flat, self.group), experts, copy_to_tp(weights, self.group))
        return reduce_from_tp(partial, self.group).view(b, t, h), logits


def load_balancing_loss(
    router_logits: list[torch.Tensor], num_experts: int, top_k: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """transformers' load_balancing_loss_func (Switch Transformer eqs. 4-6) over all MoE layers' logits."""
    tokens_per_expert = torch.zeros(num_experts, dtype=torch.float32, device=router_logits[0].device)
    prob_per_expert = torch.zeros_like(tokens_per_expert)
    rows: torch.Tensor | float = 0.0
    mask = None if attention_mask is None else attention_mask.reshape(-1).to(tokens_per_expert)
    for logits in router_logits:
        probs = torch.softmax(logits, dim=-1)
        _, selected = torch.topk(probs, top_k, dim=-1)
        if mask is None:
            tokens_per_expert = tokens_per_expert + torch.bincount(selected.reshape(-1), minlength=num_experts).float()
            prob_per_expert = prob_per_expert + probs.float().sum(dim=0)
            rows = rows + probs.shape[0]
        else:
            counts = torch.zeros_like(tokens_per_expert).scatter_add_(0, selected.reshape(-1), mask.repeat_interleave(top_k))
            tokens_per_expert = tokens_per_expert + counts
            prob_per_expert = prob_per_expert + (probs.float() * mask.unsqueeze(-1)).sum(dim=0)
            rows = rows + mask.sum()
    return torch.sum((tokens_per_expert / rows) * (prob_per_expert / rows).unsqueeze(0)) * num_experts
