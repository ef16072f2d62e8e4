"""TokenSampler: one request's way of turning logits into a token, with its own RNG and, for logits
processors, its own token history."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neuron_infer.sampling import Processors, SamplingParams, pick_tokens, select


class TokenSampler:
    """Holds a request's SamplingParams, its logits processors if any, and, when seeded, its own torch.Generator.

    A per-request generator makes a seeded request reproducible whatever runs beside it in the
    batch: its draws never interleave with another request's. Without a seed, draws come from
    torch's global RNG (like transformers' generate).

    With `processors` (a transformers LogitsProcessorList, see logits_rules.py) the sampler keeps the
    request's history, `prompt` followed by every token it picks, and hands it to them as input_ids (1, t).
    Every `pick` is therefore taken to be the request's next token. Without processors `pick` is the plain
    `select` fast path and keeps no history.
    """

    __slots__ = ("generator", "history", "params", "processors")

    def __init__(self, params: SamplingParams, seed: int | None = None, *, processors: Processors | None = None,
                 prompt: Sequence[int] | torch.Tensor | None = None):
        self.params = params
        self.processors = processors
        self.history: torch.Tensor | None = None
        if processors is not None:
            if prompt is None:
                raise ValueError("TokenSampler(processors=...) needs the request's prompt ids: the processors "
                                 "read the token history")
            self.history = torch.as_tensor(prompt, dtype=torch.long).view(1, -1)  # (1, t)
        self.generator: torch.Generator | None = None
        if seed is not None and params.do_sample:
            self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def greedy(cls) -> TokenSampler:
        return cls(SamplingParams(do_sample=False))

    def pick(self, logits: torch.Tensor) -> int:
        """logits (vocab,) -> token id (host-side sampling); with processors, the token joins the history."""
        if self.processors is None:
            return int(select(logits.view(1, -1).float(), self.params, self.generator)[0])
        token = pick_tokens(logits.view(1, -1).float(), self.params, self.generator, self.processors, self.history)
        self.history = torch.cat([self.history, token.view(1, 1)], dim=1)
        return int(token[0])

    def device_row(self) -> torch.Tensor:
        """(top_k, top_p, temperature) for graphs compiled with on-device sampling."""
        return torch.tensor(self.params.as_row(), dtype=torch.float32)

    def uniform(self) -> torch.Tensor:
        """One uniform draw (1,) that on-device sampling turns into a token."""
        return torch.rand(1, generator=self.generator)
