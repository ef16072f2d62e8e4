"""Host-side next-token selection, in transformers' order: the logits rules (repetition penalty, n-gram
and bad-word bans, minimum lengths, suppressed tokens), then temperature, then top-k, then top-p."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


# (ids so far (rows, t), logits (rows, vocab)) -> processed logits, like transformers' LogitsProcessorList.
Processors = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(kw_only=True, slots=True)
class LogitsRules:
    """generate() arguments that reshape the logits from the ids so far, before temperature/top-k/top-p.

    They run as transformers' own LogitsProcessors (imported only when a rule is set, so plain greedy
    and sampling never import transformers), built with the arguments and in the order transformers'
    generate uses. The defaults are the values that turn each rule off.
    """

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: list[list[int]] | None = None
    min_length: int = 0
    min_new_tokens: int = 0
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None

    def active(self, eos_ids: tuple[int, ...]) -> dict[str, Any]:
        """The rules that change the logits; the minimum lengths act only when there is an eos token."""
        on = {
            "repetition_penalty": self.repetition_penalty != 1.0,
            "no_repeat_ngram_size": self.no_repeat_ngram_size > 0,
            "bad_words_ids": self.bad_words_ids is not None,
            "min_length": self.min_length > 0 and bool(eos_ids),
            "min_new_tokens": self.min_new_tokens > 0 and bool(eos_ids),
            "suppress_tokens": self.suppress_tokens is not None,
            "begin_suppress_tokens": self.begin_suppress_tokens is not None,
        }
        return {name: getattr(self, name) for name, is_on in on.items() if is_on}

    def token_ids(self) -> dict[str, list[int]]:
        """Every token id a rule names, by rule (for the vocabulary check)."""
        ids = {"bad_words_ids": [t for word in self.bad_words_ids or [] for t in word],
               "suppress_tokens": list(self.suppress_tokens or []),
               "begin_suppress_tokens": list(self.begin_suppress_tokens or [])}
        return {name: found for name, found in ids.items() if found}

    def build(self, prompt_width: int, eos_ids: tuple[int, ...]) -> Processors | None:
        """The processors for prompts `prompt_width` tokens wide (padding included, as transformers counts),
        called as `processors(ids (rows, t), logits (rows, vocab))`; None when no rule is set."""
        active = self.active(eos_ids)
        if not active:
            return None
        from transformers.generation import logits_process as lp

        eos = torch.tensor(eos_ids) if eos_ids else None
        makers = {
            "repetition_penalty": lambda: lp.RepetitionPenaltyLogitsProcessor(penalty=float(self.repetition_penalty)),
            "no_repeat_ngram_size": lambda: lp.NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size),
            "bad_words_ids": lambda: lp.NoBadWordsLogitsProcessor(self.bad_words_ids, eos),
            "min_length": lambda: lp.MinLengthLogitsProcessor(self.min_length, eos),
            "min_new_tokens": lambda: lp.MinNewTokensLengthLogitsProcessor(prompt_width, self.min_new_tokens, eos),
            "suppress_tokens": lambda: lp.SuppressTokensLogitsProcessor(self.suppress_tokens),
            "begin_suppress_tokens": lambda: lp.SuppressTokensAtBeginLogitsProcessor(self.begin_suppress_tokens,
                                                                                     prompt_width),
        }
        # `makers` lists the rules in the order transformers' _get_logits_processor applies them.
        return lp.LogitsProcessorList([make() for name, make in makers.items() if name in active])


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
