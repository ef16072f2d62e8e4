"""Per-request parameters: how to pick tokens and when to stop."""

from __future__ import annotations

from dataclasses import dataclass

from neuron_infer.engine.errors import RequestError
from neuron_infer.sampling import SamplingParams


@dataclass(kw_only=True, slots=True)
class RequestParams:
    """`temperature == 0` is greedy (the other sampling fields are then ignored); `top_k == 0` and
    `top_p == 1` disable those filters. `seed` gives the request its own torch.Generator, so its
    samples do not depend on what else is running; without a seed it draws from torch's global RNG."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # Text in outputs needs a tokenizer; stop strings need text.
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a single stop string is a common slip; accept it
            self.stop = (self.stop,)
        self.stop, self.stop_token_ids = tuple(self.stop), tuple(self.stop_token_ids)
        if self.max_tokens < 1:
            raise RequestError("max_tokens", self.max_tokens, "an integer >= 1", "ask for at least one token")
        if self.temperature < 0:
            raise RequestError("temperature", self.temperature, ">= 0 (0 is greedy)", "use temperature=0 for greedy")
        if self.top_k < 0:
            raise RequestError("top_k", self.top_k, ">= 0 (0 disables top-k)", "use top_k=0 to disable it")
        if not 0 < self.top_p <= 1:
            raise RequestError("top_p", self.top_p, "0 < top_p <= 1 (1 disables top-p)", "use top_p=1.0 to disable it")
        if any(s == "" for s in self.stop):
            raise RequestError("stop", self.stop, "non-empty strings", "remove the empty stop string")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sampling(self) -> SamplingParams:
        if self.greedy:
            return SamplingParams(do_sample=False)
        return SamplingParams(do_sample=True, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
