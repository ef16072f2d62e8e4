"""The host logits rules: transformers' own LogitsProcessors, listed the way transformers' generate lists them.

`LogitsRules` holds every rule generate() and the Engine accept beyond temperature/top-k/top-p. `build` turns
the rules that are on into a `transformers.generation.LogitsProcessorList` with the arguments and in the order
of transformers' `GenerationMixin._get_logits_processor` (5.x); when sampling, the list ends with transformers'
own temperature/top-k/top-p/min-p/... warpers, so the scores are exactly the ones transformers samples from.
transformers is imported only when a rule is on: plain greedy and sampling never import it.

The one rule transformers lacks is OpenAI's presence/frequency penalty (`OpenAIPenalties`, Engine only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from neuron_infer.sampling import SamplingParams


@dataclass(slots=True)
class OpenAIPenalties:
    """OpenAI's (and vLLM's) presence and frequency penalties, which transformers does not have:
    `logits[t] -= frequency * count(t) + presence * (count(t) > 0)`, where count(t) counts t among the
    tokens generated so far (the history after its first `prompt_len` columns), never the prompt."""

    presence: float
    frequency: float
    prompt_len: int

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = input_ids[:, self.prompt_len:]  # (rows, generated)
        if out.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, out, torch.ones_like(out, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


# Rules transformers applies only when sampling (its former LogitsWarpers); greedy ignores them, as there.
SAMPLING_ONLY = ("top_h", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


@dataclass(kw_only=True, slots=True)
class LogitsRules:
    """Arguments that reshape the logits from the ids so far. The defaults turn each rule off.

    Field names and meanings are transformers' GenerationConfig's, except `presence_penalty` and
    `frequency_penalty` (OpenAI's, see OpenAIPenalties) and `logits_processor` (generate()'s argument of
    that name: the caller's LogitsProcessorList, merged as transformers merges it).
    """

    sequence_bias: dict[tuple[int, ...], float] | list | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: list[list[int]] | None = None
    min_length: int = 0
    min_new_tokens: int = 0
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    remove_invalid_values: bool = False
    exponential_decay_length_penalty: tuple[int, float] | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    logits_processor: list | None = None
    top_h: float | None = None
    min_p: float | None = None
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    renormalize_logits: bool = False
    # Not a rule: makes `build` return the list (the sampling warpers alone) when no rule is on, for the scores.
    always: bool = field(default=False)

    def active(self, eos_ids: tuple[int, ...], do_sample: bool) -> dict[str, Any]:
        """The rules that change the logits, by name; the eos-based rules act only when there is an eos token."""
        eos = bool(eos_ids)
        on = {
            "sequence_bias": bool(self.sequence_bias),
            "repetition_penalty": self.repetition_penalty != 1.0,
            "presence_penalty": self.presence_penalty != 0.0,
            "frequency_penalty": self.frequency_penalty != 0.0,
            "no_repeat_ngram_size": self.no_repeat_ngram_size > 0,
            "bad_words_ids": self.bad_words_ids is not None,
            "min_length": self.min_length > 0 and eos,
            "min_new_tokens": self.min_new_tokens > 0 and eos,
            "forced_bos_token_id": self.forced_bos_token_id is not None,
            "forced_eos_token_id": self.forced_eos_token_id is not None,
            "remove_invalid_values": self.remove_invalid_values,
            "exponential_decay_length_penalty": self.exponential_decay_length_penalty is not None and eos,
            "suppress_tokens": self.suppress_tokens is not None,
            "begin_suppress_tokens": self.begin_suppress_tokens is not None,
            "logits_processor": bool(self.logits_processor),
            "top_h": do_sample and self.top_h is not None,
            "min_p": do_sample and self.min_p is not None,
            "typical_p": do_sample and self.typical_p < 1.0,
            "epsilon_cutoff": do_sample and 0.0 < self.epsilon_cutoff < 1.0,
            "eta_cutoff": do_sample and 0.0 < self.eta_cutoff < 1.0,
            "renormalize_logits": self.renormalize_logits,
        }
        return {name: getattr(self, name) for name, is_on in on.items() if is_on}

    def token_ids(self) -> dict[str, list[int]]:
        """Every token id a rule names, by rule (for the vocabulary check)."""
        bias = self.sequence_bias or {}
        pairs = bias.items() if isinstance(bias, dict) else [(tuple(ids), b) for ids, b in bias]
        forced_eos = self.forced_eos_token_id
        ids = {"bad_words_ids": [t for word in self.bad_words_ids or [] for t in word],
               "sequence_bias": [t for seq, _ in pairs for t in seq],
               "suppress_tokens": list(self.suppress_tokens or []),
               "begin_suppress_tokens": list(self.begin_suppress_tokens or []),
               "forced_bos_token_id": [] if self.forced_bos_token_id is None else [self.forced_bos_token_id],
               "forced_eos_token_id": [] if forced_eos is None else list(forced_eos) if isinstance(forced_eos, list)
               else [forced_eos]}
        return {name: found for name, found in ids.items() if found}

    def build(self, prompt_width: int, eos_ids: tuple[int, ...], sampling: SamplingParams,
              max_length: int | None = None) -> Any:
        """The LogitsProcessorList for prompts `prompt_width` tokens wide (padding included, as transformers
        counts) generating up to `max_length` tokens in all, called as `processors(ids (rows, t), logits (rows,
        vocab))`; None when no rule is on (the caller then takes sampling.py's `select` fast path)."""
        active = self.active(eos_ids, sampling.do_sample)
        if not active and not self.always:
            return None
        from transformers.generation import logits_process as lp

        eos = torch.tensor(eos_ids) if eos_ids else None
        makers = {
            "sequence_bias": lambda: lp.SequenceBiasLogitsProcessor(self._sequence_bias_pairs()),
            "repetition_penalty": lambda: lp.RepetitionPenaltyLogitsProcessor(penalty=float(self.repetition_penalty)),
            "openai_penalties": lambda: OpenAIPenalties(float(self.presence_penalty), float(self.frequency_penalty),
                                                        prompt_width),
            "no_repeat_ngram_size": lambda: lp.NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size),
            "bad_words_ids": lambda: lp.NoBadWordsLogitsProcessor(self.bad_words_ids, eos),
            "min_length": lambda: lp.MinLengthLogitsProcessor(self.min_length, eos),
            "min_new_tokens": lambda: lp.MinNewTokensLengthLogitsProcessor(prompt_width, self.min_new_tokens, eos),
            "forced_bos_token_id": lambda: lp.ForcedBOSTokenLogitsProcessor(self.forced_bos_token_id),
            "forced_eos_token_id": lambda: lp.ForcedEOSTokenLogitsProcessor(_required(max_length),
                                                                            self.forced_eos_token_id),
            "remove_invalid_values": lambda: lp.InfNanRemoveLogitsProcessor(),
            "exponential_decay_length_penalty": lambda: lp.ExponentialDecayLengthPenalty(
                tuple(self.exponential_decay_length_penalty), eos, prompt_width),
            "suppress_tokens": lambda: lp.SuppressTokensLogitsProcessor(self.suppress_tokens),
            # transformers starts one later for a one-token prompt with a forced bos.
            "begin_suppress_tokens": lambda: lp.SuppressTokensAtBeginLogitsProcessor(
                self.begin_suppress_tokens,
                prompt_width + (prompt_width == 1 and self.forced_bos_token_id is not None)),
        }
        wanted = set(active)
        if wanted & {"presence_penalty", "frequency_penalty"}:  # one processor for both (not transformers')
            wanted.add("openai_penalties")
        # `makers` lists the rules in the order transformers' _get_logits_processor applies them.
        processors = lp.LogitsProcessorList([make() for name, make in makers.items() if name in wanted])
        processors = _merge(processors, self.logits_processor or [])
        if sampling.do_sample:
            processors.extend(self._warpers(lp, sampling, active))
        if self.renormalize_logits:
            processors.append(lp.LogitNormalization())
        return processors

    def _warpers(self, lp: Any, sampling: SamplingParams, active: dict[str, Any]) -> list:
        warpers = []
        if sampling.temperature != 1.0:
            warpers.append(lp.TemperatureLogitsWarper(sampling.temperature))
        if "top_h" in active:
            warpers.append(lp.TopHLogitsWarper(top_h=self.top_h))
        if sampling.top_k != 0:
            warpers.append(lp.TopKLogitsWarper(top_k=sampling.top_k))
        if sampling.top_p < 1.0:
            warpers.append(lp.TopPLogitsWarper(top_p=sampling.top_p))
        if "min_p" in active:
            warpers.append(lp.MinPLogitsWarper(min_p=self.min_p))
        if "typical_p" in active:
            warpers.append(lp.TypicalLogitsWarper(mass=self.typical_p))
        if "epsilon_cutoff" in active:
            warpers.append(lp.EpsilonLogitsWarper(epsilon=self.epsilon_cutoff))
        if "eta_cutoff" in active:
            warpers.append(lp.EtaLogitsWarper(epsilon=self.eta_cutoff))
        return warpers

    def _sequence_bias_pairs(self) -> list[list]:
        bias = self.sequence_bias
        pairs = bias.items() if isinstance(bias, dict) else bias
        return [[list(ids), float(b)] for ids, b in pairs]


def _required(max_length: int | None) -> int:
    if max_length is None:
        raise ValueError("forced_eos_token_id needs the generation's max_length")
    return max_length


def _merge(default: list, custom: list) -> Any:
    """transformers' _merge_criteria_processor_list: a custom processor replaces a built one of the same type
    in place; the other custom ones follow the built ones."""
    if not custom:
        return default
    merged = type(default)()
    for built in default:
        merged.append(next((c for c in custom if type(c) is type(built)), built))
    merged.extend(c for c in custom if c not in merged)
    return merged
