"""Per-request parameters: how to pick tokens and when to stop."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from neuron_infer.engine.errors import RequestError
from neuron_infer.engine.sampler import TokenSampler
from neuron_infer.logits_rules import LogitsRules
from neuron_infer.sampling import SamplingParams


@dataclass(kw_only=True, slots=True)
class RequestParams:
    """`temperature == 0` is greedy (the other sampling fields are then ignored); `top_k == 0` and
    `top_p == 1` disable those filters. `seed` gives the request its own torch.Generator, so its
    samples do not depend on what else is running; without a seed it draws from torch's global RNG.

    The logits rules run on the host as transformers' LogitsProcessors (neuron_infer.logits_rules), with
    vLLM's / OpenAI's meanings: `repetition_penalty` (transformers': divides positive logits of every token
    in prompt and output, 1 is off), `presence_penalty` and `frequency_penalty` (OpenAI's, on output tokens
    only, 0 is off), `min_p` (sampling only, 0 is off), `min_tokens` (no eos or stop token before that many
    tokens), `logit_bias` (token id -> added to its logit), `bad_words_ids` (token sequences never
    generated), `allowed_token_ids` (every other token is suppressed). They need the logits, so an artifact
    that samples on the device refuses them."""

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
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_p: float = 0.0
    min_tokens: int = 0
    logit_bias: dict[int, float] | None = None
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    allowed_token_ids: tuple[int, ...] | None = None

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
        self._check_rules()

    def _check_rules(self) -> None:
        if not _is_real(self.repetition_penalty) or not self.repetition_penalty > 0:
            raise RequestError("repetition_penalty", self.repetition_penalty, "> 0 (1 is off, > 1 discourages "
                               "repeats)", "use repetition_penalty=1.0 to turn it off")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_real(value) or not -2 <= value <= 2:
                raise RequestError(name, value, "-2 <= value <= 2 (OpenAI's range; 0 is off)", f"use {name}=0.0 to "
                                   "turn it off")
        if not _is_real(self.min_p) or not 0 <= self.min_p <= 1:
            raise RequestError("min_p", self.min_p, "0 <= min_p <= 1 (0 is off)", "use min_p=0.0 to turn it off")
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            raise RequestError("min_tokens", self.min_tokens, f"an integer in [0, max_tokens={self.max_tokens}]",
                               "lower min_tokens, or raise max_tokens")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict) or not all(
                    _is_int(t) and _is_real(b) and math.isfinite(b) for t, b in self.logit_bias.items()):
                raise RequestError("logit_bias", self.logit_bias, "a dict {token id: finite bias}",
                                   "pass int keys and float values (use bad_words_ids to ban a token)")
            self.logit_bias = {int(t): float(b) for t, b in self.logit_bias.items()}
        words = _as_tuple("bad_words_ids", self.bad_words_ids, "a sequence of token-id sequences")
        if not all(isinstance(w, (list, tuple)) and w and all(_is_int(t) for t in w) for w in words):
            raise RequestError("bad_words_ids", self.bad_words_ids, "non-empty sequences of integer token ids",
                               "pass e.g. [[17], [33, 5]]")
        self.bad_words_ids = tuple(tuple(int(t) for t in w) for w in words)
        if self.allowed_token_ids is not None:
            allowed = _as_tuple("allowed_token_ids", self.allowed_token_ids, "a sequence of token ids")
            if not allowed or not all(_is_int(t) for t in allowed):
                raise RequestError("allowed_token_ids", self.allowed_token_ids, "a non-empty sequence of integer "
                                   "token ids, or None", "pass the ids to keep, or None for all")
            self.allowed_token_ids = tuple(int(t) for t in allowed)

    def host_rules(self) -> dict[str, Any]:
        """The rules that are on (they need the logits on the host), by field name."""
        on = {"repetition_penalty": self.repetition_penalty != 1.0, "presence_penalty": self.presence_penalty != 0,
              "frequency_penalty": self.frequency_penalty != 0, "min_p": not self.greedy and self.min_p > 0,
              "min_tokens": self.min_tokens > 0, "logit_bias": bool(self.logit_bias),
              "bad_words_ids": bool(self.bad_words_ids), "allowed_token_ids": self.allowed_token_ids is not None}
        return {name: getattr(self, name) for name, is_on in on.items() if is_on}

    def token_ids(self) -> dict[str, list[int]]:
        """Every token id a rule names, by field (for the vocabulary check)."""
        ids = {"logit_bias": list(self.logit_bias or {}), "bad_words_ids": [t for w in self.bad_words_ids for t in w],
               "allowed_token_ids": list(self.allowed_token_ids or ())}
        return {name: found for name, found in ids.items() if found}

    def check_for(self, on_device_sampling: bool, max_topk: int, vocab_size: int | None) -> None:
        """What this request asks of an artifact: host rules need logits, ids must be in its vocabulary."""
        if on_device_sampling:
            for name, value in self.host_rules().items():
                raise RequestError(name, value, "only temperature, top_k and top_p on this artifact (it samples on "
                                   "the device: its graphs return token ids, not logits)",
                                   "leave it unset, or re-export the artifact without --on-device-sampling")
            if not self.greedy and self.top_k > max_topk:
                raise RequestError("top_k", self.top_k, f"<= max_topk={max_topk} of this artifact",
                                   "lower top_k, or re-export with a larger --max_topk")
        for name, ids in self.token_ids().items():
            bad = [t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size)]
            if bad:
                raise RequestError(name, bad[0], f"token ids in [0, {vocab_size})", "check the ids against the "
                                   "artifact's tokenizer")
        if self.allowed_token_ids is not None and vocab_size is None:
            raise RequestError("allowed_token_ids", self.allowed_token_ids, "only when the artifact records its "
                               "vocabulary size", "re-export the artifact, or use logit_bias")

    def sampler(self, prompt: list[int], stop_ids: Iterable[int], vocab_size: int | None) -> TokenSampler:
        """This request's TokenSampler: the plain fast path, or transformers' processors over its history.
        `stop_ids` (eos and stop_token_ids) are what min_tokens holds back, as in vLLM."""
        sampling = self.sampling()
        rules = self.logits_rules(vocab_size)
        processors = rules.build(len(prompt), tuple(sorted(stop_ids)), sampling)
        return TokenSampler(sampling, self.seed, processors=processors, prompt=prompt)

    def logits_rules(self, vocab_size: int | None) -> LogitsRules:
        allowed = self.allowed_token_ids
        suppressed = None if allowed is None else sorted(set(range(vocab_size or 0)) - set(allowed))
        return LogitsRules(
            sequence_bias={(t,): b for t, b in self.logit_bias.items()} if self.logit_bias else None,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, bad_words_ids=[list(w) for w in self.bad_words_ids] or None,
            min_new_tokens=self.min_tokens, suppress_tokens=suppressed or None,
            min_p=self.min_p if self.min_p > 0 else None)

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
