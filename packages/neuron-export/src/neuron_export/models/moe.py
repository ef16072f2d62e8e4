"""Routed experts (mixtral, qwen3_moe) for the static decoder: a replicated router and the experts' gated MLPs,
computed only for the (token, expert) pairs the router selects.

Routing is transformers' (5.19 `MixtralTopKRouter` / `Qwen3MoeTopKRouter`): softmax of the router logits in fp32,
top-k, renormalised to sum 1 iff `norm_topk_prob`; qwen3_moe casts the k weights to the activations' dtype before
scaling the expert outputs, mixtral scales in fp32 and casts the product (`routing_weights_fp32`).

Only the selected (token, expert) pairs are computed, and expert weights are never copied: each expert's weights are
views (`gate_up_proj[e]`) of the stacked parameters, indexed by ids the graph reads from its own routing (unbacked
symbolic ints, which torch.export and AOTInductor handle). The graph's token count fixes the layout at trace time:
- decode (up to half as many pairs as experts): pair by pair, P = tokens * k GEMVs over the chosen experts' weights;
- prefill: pairs sorted by expert, each expert's run (a length known only at run time) through its weights, as
  transformers' own loop does, in one static graph.
The alternatives measured in bench/moe_paths.py lose: copying each pair's expert weights out (index_select on the
expert dim) and batch-multiplying costs more in copies than the matmuls; padding sorted pairs to fixed-size blocks
adds copies and wasted rows; `aten._grouped_mm` (in place) traces only in bf16 in torch 2.13; dense over all
experts costs num_experts / k times the work.

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


def per_pair(pairs: int, experts: int, ep: int = 1) -> bool:
    """Whether a graph of `pairs` (token, expert) pairs runs pair by pair (decode) or expert by expert (prefill).
    Pair by pair up to half as many pairs as experts: bench/moe_paths.py (32 experts, top-4, 1 thread) has 4 pairs
    at 0.89 ms vs 1.43 expert by expert, 16 pairs at a tie, 128 pairs at 24 vs 9.5 ms. Never with expert parallelism:
    another rank's pairs would still cost a GEMV each, where expert by expert skips them."""
    return 2 * pairs <= experts and ep == 1


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
        from neuron_export.models.decoder import ACTIVATIONS  # decoder.py imports this module: read it at build

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
            weights, ids = torch.where(mine, weights, 0), torch.where(mine, ids, self.local_experts)
        out = self._pairs(h, weights, ids) if per_pair(ids.numel(), self.local_experts, self.ep) else \
            self._experts(h, weights, ids)
        return all_reduce(out.view(B, T, H), self.tp)

    def _expert(self, rows: torch.Tensor, e: int | torch.SymInt) -> torch.Tensor:
        """rows (n, H) through expert e: its weights are views of the stacked parameters, never copied."""
        gate, up = F.linear(rows, self.experts.gate_up_proj[e]).split(self.intermediate, dim=-1)
        return F.linear(self.act(gate) * up, self.experts.down_proj[e])

    def _pairs(self, h: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Decode: each (token, expert) pair through its expert, the expert id read in the graph (P = N*k GEMVs)."""
        N, k = ids.shape
        outs = []
        for j, e in enumerate(ids.reshape(-1).tolist()):
            torch._check(e >= 0)
            torch._check(e < self.local_experts)
            outs.append(self._expert(h[j // k:j // k + 1], e))
        out = torch.cat(outs).view(N, k, -1)
        return (out * weights.unsqueeze(-1)).to(h.dtype).sum(dim=1)

    def _experts(self, h: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Prefill: pairs sorted by expert, each expert's run (a data-dependent length, read in the graph) through
        its expert; another rank's pairs (id local_experts) sort last and are skipped (zeros)."""
        N, k = ids.shape
        P, E = N * k, self.local_experts
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        rows = h.index_select(0, torch.div(order, k, rounding_mode="floor"))  # (P, H) each sorted pair's token
        counts = torch.zeros(E + 1, dtype=torch.long, device=h.device).index_add_(0, flat, torch.ones_like(flat))
        outs, start = [], 0
        for e, count in enumerate(counts[:E].tolist()):
            torch._check(count >= 0)
            torch._check(start + count <= P)
            outs.append(self._expert(rows.narrow(0, start, count), e))
            start = start + count
        outs.append(h.new_zeros(P - start, h.shape[1]))  # another rank's pairs
        # Back to pair order by a gather, not a scatter-add: AOTInductor runs a 16-bit index_add through its proxy
        # executor, which miscounts its int arguments in torch 2.13 ("Mismatch between ints consumed and num_ints").
        out = torch.cat(outs).index_select(0, torch.argsort(order)).view(N, k, -1)
        return (out * weights.unsqueeze(-1)).to(h.dtype).sum(dim=1)
