"""Routed experts (mixtral, qwen3_moe) for the static decoder: a replicated router and the experts' gated MLPs,
computed only for the (token, expert) pairs the router selects.

Routing is transformers' (5.19 `MixtralTopKRouter` / `Qwen3MoeTopKRouter`): softmax of the router logits in fp32,
top-k, renormalised to sum 1 iff `norm_topk_prob`; qwen3_moe casts the k weights to the activations' dtype before
scaling the expert outputs, mixtral scales in fp32 and casts the product (`routing_weights_fp32`).

The graphs have static shapes, so the work per graph is fixed at trace time from its token count: the P = tokens * k
selected pairs are laid out in blocks of `block` rows that all go to one expert (pairs sorted by expert, each
expert's run padded to whole blocks), each block's expert weights are gathered (index_select on the expert dim) and
the blocks are batch-multiplied. A decode step uses blocks of one row (no sort, no padding: P weight slices gathered,
no expert computed that no token chose); prefill uses larger blocks (fewer weight copies, some padded rows). Both
are stock aten ops that torch.export and AOTInductor handle in every dtype (`aten._grouped_mm`, which would avoid
the weight copies, only traces in bf16 in torch 2.13). `bench/moe_paths.py` measures the choices.

Parallelism (models/parallel.py): with tensor_parallel_size tp and expert_parallel_size ep, rank r holds the
num_experts / ep experts of group r // (tp / ep), each cut to its slice of the experts' hidden dimension; every rank
routes all tokens (replicated router), computes its experts' partial outputs for the pairs that chose them, and one
all_reduce sums the ranks' partial outputs, as the dense MLP's down_proj does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuron_cache.arch.spec import DecoderArch
from neuron_export.models.parallel import all_reduce

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
# Rows per block in graphs whose selected pairs outnumber the local experts (prefill); see bench/moe_paths.py.
PREFILL_BLOCK = 16


def block_rows(pairs: int, experts: int) -> int:
    """Rows per expert block for a graph of `pairs` (token, expert) pairs: 1 (gather every pair's expert) while
    that copies no more weights than padding would waste, else PREFILL_BLOCK."""
    return 1 if pairs <= 2 * experts else PREFILL_BLOCK


class Experts(nn.Module):
    """`experts` gated MLPs stacked on dim 0: gate_up_proj (E, 2I, H) = cat(gate, up), down_proj (E, H, I)."""

    def __init__(self, experts: int, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(experts, 2 * intermediate, hidden))
        self.down_proj = nn.Parameter(torch.empty(experts, hidden, intermediate))


class MoE(nn.Module):
    """`arch` is a rank's (`rank_arch`): its experts' hidden size; num_experts is the model's (the router's)."""

    def __init__(self, arch: DecoderArch, tp: int = 1, ep: int = 1):
        super().__init__()
        self.tp, self.top_k, self.norm_topk_prob = tp, arch.num_experts_per_tok, arch.norm_topk_prob
        self.weights_fp32 = arch.routing_weights_fp32
        self.local_experts = arch.num_experts // ep
        self.intermediate = arch.expert_intermediate_size
        self.router = nn.Linear(arch.hidden_size, arch.num_experts, bias=False)
        self.experts = Experts(self.local_experts, arch.hidden_size, self.intermediate)
        self.act = ACTIVATIONS[arch.hidden_act]
        if ep > 1:  # the first expert this rank holds: a per-rank constant (rank_buffers), the graph is SPMD
            self.register_buffer("expert_offset", torch.zeros((), dtype=torch.long))
        self.ep = ep

    def rank_buffers(self, rank: int) -> dict[str, torch.Tensor]:
        if self.ep == 1:
            return {}
        group = rank // (self.tp // self.ep)
        return {"expert_offset": torch.tensor(group * self.local_experts, dtype=torch.long)}

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, H) -> routing weights (N, k) and global expert ids (N, k)."""
        logits = self.router(x)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return (weights if self.weights_fp32 else weights.to(x.dtype)), ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        h = x.reshape(B * T, H)
        weights, ids = self.route(h)
        if self.ep > 1:  # pairs routed to another rank's experts weigh 0 here (that rank adds them)
            ids = ids - self.expert_offset
            mine = (ids >= 0) & (ids < self.local_experts)
            # (decode gathers expert 0 for them; prefill sorts them past the last block: id local_experts)
            weights, ids = torch.where(mine, weights, 0), torch.where(mine, ids, self.local_experts)
        block = block_rows(ids.numel(), self.local_experts)
        out = self._pairs(h, weights, ids) if block == 1 else self._blocks(h, weights, ids, block)
        return all_reduce(out.view(B, T, H), self.tp)

    def _mlp(self, rows: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """rows (n, b, H) through expert experts[j] for block j: the selected weight slices, batch-multiplied."""
        gate_up = torch.bmm(rows, self.experts.gate_up_proj.index_select(0, experts).transpose(1, 2))
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return torch.bmm(self.act(gate) * up, self.experts.down_proj.index_select(0, experts).transpose(1, 2))

    def _pairs(self, h: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """One block per (token, expert) pair: (N*k, 1, H) rows, N*k weight slices."""
        N, k = ids.shape
        ids = ids.clamp(max=self.local_experts - 1)  # another rank's pair (id local_experts, weight 0)
        rows = h.repeat_interleave(k, dim=0).unsqueeze(1)
        out = self._mlp(rows, ids.reshape(-1)).view(N, k, -1)
        return (out * weights.unsqueeze(-1)).to(h.dtype).sum(dim=1)

    def _blocks(self, h: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, block: int) -> torch.Tensor:
        """Pairs sorted by expert into blocks of `block` rows of one expert each (each expert's run padded to whole
        blocks with a zero row of weight 0): at most ceil(N*k / block) + E blocks, a static bound."""
        N, k = ids.shape
        E, P = self.local_experts, N * k
        nblocks = -(-P // block) + E
        S = nblocks * block  # slots; slot S is a dump for pairs of another rank's experts (id E, sorted last)
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        expert = flat.index_select(0, order)  # (P,) sorted
        counts = torch.zeros(E + 1, dtype=torch.long, device=h.device).index_add_(0, flat, torch.ones_like(flat))
        padded = (counts[:E] + block - 1) // block * block
        first_slot = torch.cat([torch.cumsum(padded, 0) - padded, padded.new_full((1,), S)])
        first_pair = torch.cumsum(counts, 0) - counts  # where each expert's pairs start in sorted order
        rank_in_run = torch.arange(P, device=h.device) - first_pair.index_select(0, expert)
        slot = torch.where(expert < E, first_slot.index_select(0, expert) + rank_in_run, S)
        # slot -> token row (N: the zero row) and routing weight (0 on padding)
        token = torch.full((S + 1,), N, dtype=torch.long, device=h.device)
        token = token.index_put((slot,), torch.div(order, k, rounding_mode="floor"))[:S]
        scale = torch.zeros(S + 1, dtype=weights.dtype, device=h.device)
        scale = scale.index_put((slot,), weights.reshape(-1).index_select(0, order))[:S]
        # block j belongs to the expert whose run holds slot j * block (blocks past the last run: padding only)
        starts = torch.arange(nblocks, device=h.device) * block
        block_expert = (torch.cumsum(padded, 0).view(1, E) <= starts.view(-1, 1)).sum(1).clamp(max=E - 1)
        rows = torch.cat([h, h.new_zeros(1, h.shape[1])]).index_select(0, token).view(nblocks, block, -1)
        out = self._mlp(rows, block_expert).reshape(S, -1)
        out = (out * scale.unsqueeze(-1)).to(h.dtype)
        return h.new_zeros(N + 1, h.shape[1]).index_add_(0, token, out)[:N]
