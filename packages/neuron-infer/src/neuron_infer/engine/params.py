"""Per-request parameters: how to pick tokens and when to stop."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

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
        if _is_int(self.stop_token_ids):  # so is a single stop id
            self.stop_token_ids = (self.stop_token_ids,)
        self.stop = _as_tuple("stop", self.stop, "a string or a sequence of strings")
        self.stop_token_ids = _as_tuple("stop_token_ids", self.stop_token_ids, "a sequence of token ids")
        # The comparisons are written `not x >= lo` so that NaN fails them: it would surface only mid-step.
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise RequestError("max_tokens", self.max_tokens, "an integer >= 1", "ask for at least one token")
        if not _is_real(self.temperature) or not self.temperature >= 0:
            raise RequestError("temperature", self.temperature, ">= 0 (0 is greedy)", "use temperature=0 for greedy")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise RequestError("top_k", self.top_k, "an integer >= 0 (0 disables top-k)", "use top_k=0 to disable it")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise RequestError("top_p", self.top_p, "0 < top_p <= 1 (1 disables top-p)", "use top_p=1.0 to disable it")
        if self.seed is not None and not _is_int(self.seed):
            raise RequestError("seed", self.seed, "an integer or None", "pass an int seed, or None for torch's RNG")
        if not all(isinstance(s, str) for s in self.stop):
            raise RequestError("stop", self.stop, "strings", "pass text, or token ids as stop_token_ids")
        if any(s == "" for s in self.stop):
            raise RequestError("stop", self.stop, "non-empty strings", "remove the empty stop string")
        if not all(_is_int(t) for t in self.stop_token_ids):
            raise RequestError("stop_token_ids", self.stop_token_ids, "integer token ids",
                               "pass ints (a stop text goes in stop=)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sampling(self) -> SamplingParams:
        if self.greedy:
            return SamplingParams(do_sample=False)
        return SamplingParams(do_sample=True, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)


def _as_tuple(name: str, value: Any, allowed: str) -> tuple:
    try:
        return tuple(value)
    except TypeError:
        raise RequestError(name, value, allowed, f"pass {name} as a list or tuple") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
