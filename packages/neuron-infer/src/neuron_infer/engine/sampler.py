"""TokenSampler: one request's way of turning logits into a token, with its own RNG."""

from __future__ import annotations

import torch

from neuron_infer.sampling import SamplingParams, select


class TokenSampler:
    """Holds a request's SamplingParams and, when seeded, its own torch.Generator.

    A per-request generator makes a seeded request reproducible whatever runs beside it in the
    batch: its draws never interleave with another request's. Without a seed, draws come from
    torch's global RNG (like transformers' generate).
    """

    __slots__ = ("generator", "params")

    def __init__(self, params: SamplingParams, seed: int | None = None):
        self.params = params
        self.generator: torch.Generator | None = None
        if seed is not None and params.do_sample:
            self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def greedy(cls) -> TokenSampler:
        return cls(SamplingParams(do_sample=False))

    def pick(self, logits: torch.Tensor) -> int:
        """logits (vocab,) -> token id (host-side sampling)."""
        return int(select(logits.view(1, -1).float(), self.params, self.generator)[0])

    def device_row(self) -> torch.Tensor:
        """(top_k, top_p, temperature) for graphs compiled with on-device sampling."""
        return torch.tensor(self.params.as_row(), dtype=torch.float32)

    def uniform(self) -> torch.Tensor:
        """One uniform draw (1,) that on-device sampling turns into a token."""
        return torch.rand(1, generator=self.generator)
