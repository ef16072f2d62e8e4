"""Host-side next-token selection: `select` is the fast path (temperature, top-k, top-p, or greedy);
`pick_tokens` runs transformers' logits processors first when a request has any (logits_rules.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from neuron_cache.signature import GREEDY_ROW, SAMPLING_ROW


@dataclass(kw_only=True, slots=True)
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0

    def __post_init__(self) -> None:
        # `not x > 0` also refuses NaN, which would only surface later as a multinomial error.
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 when sampling; "
                             "use do_sample=False for greedy")
        if not 0 < self.top_p <= 1:  # NaN fails this too
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 disables top-k)")

    def as_row(self) -> list[float]:
        """This request's row of a graph's `sampling_params` input (laid out as SAMPLING_ROW)."""
        if not self.do_sample:
            return list(GREEDY_ROW)
        # top_k=0 (no filtering) becomes a k above any vocabulary: the graph clamps it to its max_topk.
        values = {"top_k": float(self.top_k) if self.top_k > 0 else 1e9, "top_p": self.top_p,
                  "temperature": self.temperature}
        return [values[name] for name in SAMPLING_ROW]


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


# (ids so far (rows, t), logits (rows, vocab)) -> processed scores: a transformers LogitsProcessorList.
Processors = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pick_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                processors: Processors | None = None, history: torch.Tensor | None = None) -> torch.Tensor:
    """logits (rows, vocab) -> token ids (rows,): `select` without processors; with them, as transformers'
    generate does: argmax of the processed scores, or one draw from their softmax (the processors then
    include the sampling warpers)."""
    if processors is None:
        return select(logits, params, generator)
    return choose(processors(history, logits), params.do_sample, generator)


def choose(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Processed scores (rows, vocab) -> token ids (rows,), as transformers' _sample picks them."""
    if not do_sample:
        return scores.argmax(dim=-1)
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).view(-1)
