"""On-device sampling: greedy, top-k, top-p and temperature per row, inside the graph.

Per-row parameters arrive as a (rows, 3) float tensor laid out as `neuron_cache.signature.SAMPLING_ROW`
(greedy is `GREEDY_ROW`: top_k=1, as in NxDI), and the randomness as one uniform number per row from the host, so a seeded
host generator makes sampling reproducible and the graph itself stays deterministic.
"""

from __future__ import annotations

import torch

from neuron_cache.signature import SAMPLING_ROW

_TOP_K, _TOP_P, _TEMPERATURE = (SAMPLING_ROW.index(n) for n in ("top_k", "top_p", "temperature"))


def sample_on_device(logits: torch.Tensor, params: torch.Tensor, rand: torch.Tensor, max_topk: int) -> torch.Tensor:
    """logits (rows, vocab) fp32, params (rows, 3), rand (rows,) in [0, 1) -> tokens (rows,) int64."""
    k = min(max_topk, logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)  # sorted, largest first
    top_k = params[:, _TOP_K:_TOP_K + 1].clamp(1, k)
    top_p = params[:, _TOP_P:_TOP_P + 1]
    temperature = params[:, _TEMPERATURE:_TEMPERATURE + 1].clamp_min(1e-6)
    rank = torch.arange(k, device=logits.device).view(1, -1)
    scaled = (values / temperature).masked_fill(rank >= top_k, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    # top-p keeps the smallest prefix whose mass reaches top_p; the first token is always kept.
    mass_before = probs.cumsum(-1) - probs
    probs = probs.masked_fill((mass_before >= top_p) & (rank > 0), 0.0)
    cdf = probs.cumsum(-1)
    threshold = rand.view(-1, 1) * cdf[:, -1:]
    choice = (cdf <= threshold).sum(-1, keepdim=True).clamp(max=k - 1)
    return indices.gather(-1, choice).view(-1)
