"""Host-side next-token selection, in transformers' order: temperature, then top-k, then top-p."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(kw_only=True, slots=True)
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 when sampling; use do_sample=False for greedy")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 disables top-k)")

    def as_row(self) -> list[float]:
        """(top_k, top_p, temperature) for on-device sampling; greedy is top_k=1."""
        if not self.do_sample:
            return [1.0, 1.0, 1.0]
        return [float(self.top_k) if self.top_k > 0 else 1e9, self.top_p, self.temperature]


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits (rows, vocab) float -> filtered logits (-inf outside the kept set)."""
    logits = logits / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = cum <= (1 - params.top_p)
        remove_sorted[..., -1:] = False  # always keep the most likely token
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def select(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (rows, vocab) -> token ids (rows,)."""
    if not params.do_sample:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float(), params).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).view(-1)
