"""What `generate` accepts: its arguments resolved against generation_config.json, and its inputs checked.

Every argument transformers' generate takes is either implemented the way transformers does it or
refused by name (UNSUPPORTED); none is silently ignored. Inputs a cast or the compiled kernels would
silently turn into other tokens (floats, out-of-vocabulary ids, a mask of another shape) are refused
with one error each.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuron_infer.logits_rules import LogitsRules
from neuron_infer.runtime import DecoderRuntime
from neuron_infer.sampling import SamplingParams

_FILE_FIX = "repair the file, or delete it to generate with transformers' defaults"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_ids(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(_is_int(t) for t in value)


# The type of every generation field generate() reads, for generation_config.json and for arguments alike.
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{name: (_is_int, "an integer") for name in (
        "max_length", "max_new_tokens", "top_k", "pad_token_id", "num_return_sequences", "no_repeat_ngram_size",
        "min_length", "min_new_tokens")},
    **{name: (_is_real, "a number") for name in (
        "temperature", "top_p", "repetition_penalty", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h")},
    **{name: (lambda v: isinstance(v, bool), "true or false") for name in (
        "do_sample", "renormalize_logits", "remove_invalid_values", "output_scores", "output_logits",
        "return_dict_in_generate")},
    "eos_token_id": (lambda v: _is_int(v) or _is_ids(v), "an integer or a list of integers"),
    "forced_bos_token_id": (_is_int, "an integer"),
    "forced_eos_token_id": (lambda v: _is_int(v) or _is_ids(v), "an integer or a list of integers"),
    "sequence_bias": (lambda v: _is_sequence_bias(v), "a dict {(token ids): bias} or a list [[token ids, bias], ...]"),
    "exponential_decay_length_penalty": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and _is_int(v[0])
                                         and _is_real(v[1]), "a pair (start index, decay factor)"),
    "suppress_tokens": (_is_ids, "a list of integers"),
    "begin_suppress_tokens": (_is_ids, "a list of integers"),
    "bad_words_ids": (lambda v: isinstance(v, (list, tuple)) and all(_is_ids(w) for w in v),
                      "a list of lists of integers"),
}


def _is_sequence_bias(value: Any) -> bool:
    pairs = value.items() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else None
    return pairs is not None and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and _is_ids(p[0]) and len(p[0]) > 0 and _is_real(p[1])
        for p in pairs)


def _kind_problem(name: str, value: Any) -> str | None:
    if value is None or name not in KINDS:
        return None
    check, kind = KINDS[name]
    return None if check(value) else f"'{name}' = {value!r} is not {kind}"


_BEAMS = "beam search is not implemented on the compiled slots; use num_beams=1 to decode greedily or to sample"
_NOT_HERE = "not implemented by this runtime; leave it unset"
_ASSISTED = "assisted and speculative decoding are not implemented; leave it unset"

# What transformers' GenerationConfig can ask for and this generate does not do: name -> (the value that
# turns it off, what to do instead). A field at None or that value passes; anything else is refused by name.
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "num_beams": (1, _BEAMS),
    "num_beam_groups": (1, _BEAMS),
    "diversity_penalty": (0.0, _BEAMS),
    "constraints": (None, _BEAMS),
    "force_words_ids": (None, _BEAMS),
    "penalty_alpha": (0.0, "contrastive search is not implemented; decode greedily or sample"),
    "dola_layers": (None, "DoLa decoding is not implemented; leave it unset"),
    "guidance_scale": (1.0, "classifier-free guidance is not implemented; leave it unset"),
    "encoder_repetition_penalty": (1.0, "decoder-only models have no encoder; use repetition_penalty"),
    "encoder_no_repeat_ngram_size": (0, "decoder-only models have no encoder; use no_repeat_ngram_size"),
    "max_time": (None, "pass stopping_criteria=StoppingCriteriaList([MaxTimeCriteria(max_time)]) instead"),
    "stop_strings": (None, "pass stopping_criteria with transformers' StopStringCriteria instead, or use "
                           "neuron_infer.engine.Engine with RequestParams(stop=...)"),
    "token_healing": (False, _NOT_HERE),
    "output_attentions": (False, "the compiled graphs return no attentions; leave it unset"),
    "output_hidden_states": (False, "the compiled graphs return no hidden states; leave it unset"),
    "watermarking_config": (None, _NOT_HERE),
    "prompt_lookup_num_tokens": (None, _ASSISTED),
    "assistant_early_exit": (None, _ASSISTED),
    "use_mtp": (False, _ASSISTED),
    "speculation_type": (None, _ASSISTED),
}


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file, or one ValueError '<path>: <problem>; <fix>'."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                         f"{_FILE_FIX}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                         f"{_FILE_FIX}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level is a JSON {type(data).__name__}, not an object; {_FILE_FIX}")
    return data


@dataclass(kw_only=True)
class GenerationDefaults:
    """The generation_config.json fields generate() reads, parsed without importing transformers.

    It quacks like transformers.GenerationConfig for GenerationSettings.resolve: the same attribute
    names, the same None defaults (transformers 5), and `update` returning the arguments it does not know.
    The file's other fields are kept in `other`, so that one generate() cannot implement is refused.
    """

    max_length: int | None = None
    max_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    num_return_sequences: int | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    bad_words_ids: list[list[int]] | None = None
    min_length: int | None = None
    min_new_tokens: int | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    other: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "other")

    @classmethod
    def from_dir(cls, root: Path) -> GenerationDefaults:
        path = Path(root) / "generation_config.json"
        if not path.is_file():
            return cls()
        data = _read_json_object(path)
        for name in cls.names():
            problem = _kind_problem(name, data.get(name))
            if problem:
                raise ValueError(f"{path}: field {problem}; {_FILE_FIX}")
        other = {k: v for k, v in data.items() if k not in cls.names()}
        return cls(**{n: data.get(n) for n in cls.names()}, other=other)

    @classmethod
    def covers(cls, kwargs: dict[str, Any]) -> bool:
        return all(k in cls.names() for k in kwargs)

    def update(self, **kwargs: Any) -> dict[str, Any]:
        unknown = {}
        for key, value in kwargs.items():
            if key in self.names():
                setattr(self, key, value)
            else:
                unknown[key] = value
        return unknown

    def get(self, name: str) -> Any:
        return getattr(self, name) if name in self.names() else self.other.get(name)


def _config_value(config: Any, name: str) -> Any:
    return config.get(name) if isinstance(config, GenerationDefaults) else getattr(config, name, None)


def _refuse_unsupported(config: Any, kwargs: dict[str, Any]) -> None:
    for name, (off, instead) in UNSUPPORTED.items():
        value = _config_value(config, name)
        if value is None or (not isinstance(value, torch.Tensor) and value == off):
            continue
        if name in kwargs:
            raise ValueError(f"generate(): {name}={value!r} is not supported: {instead}")
        raise ValueError(f"generate(): the generation config sets {name}={value!r} (the artifact's "
                         f"generation_config.json, or generation_config=), which is not supported: {instead}; "
                         f"pass {name}={off!r} to generate() to run without it")


def _max_new_tokens(max_new: int | None, max_length: int | None, prompt_len: int) -> int:
    if max_new is not None:
        if max_new <= 0:
            raise ValueError(f"generate(): max_new_tokens={max_new} must be at least 1 (transformers refuses it "
                             "too); ask for one or more new tokens")
        return int(max_new)
    if max_length is None:
        return 20  # transformers' default when neither is set anywhere: 20 new tokens
    if max_length <= prompt_len:
        raise ValueError(f"generate(): max_length={max_length} leaves no room after the {prompt_len} tokens of "
                         "input_ids (transformers refuses it too); raise max_length or set max_new_tokens")
    return int(max_length) - prompt_len


def _num_return_sequences(n: int | None, do_sample: bool) -> int:
    n = 1 if n is None else int(n)
    if n < 1:
        raise ValueError(f"generate(): num_return_sequences={n} must be at least 1")
    if n > 1 and not do_sample:
        raise ValueError(f"generate(): num_return_sequences={n} needs do_sample=True: greedy decoding returns the "
                         "same sequence every time (transformers refuses it too); sample, or ask for 1")
    return n


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


@dataclass(kw_only=True, slots=True)
class GenerationSettings:
    max_new_tokens: int
    sampling: SamplingParams
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    num_return_sequences: int = 1
    rules: LogitsRules = field(default_factory=LogitsRules)
    output_scores: bool = False  # transformers' GenerateDecoderOnlyOutput.scores: the processed scores per step
    output_logits: bool = False  # ... and .logits: the raw logits per step
    return_dict_in_generate: bool = False

    @classmethod
    def resolve(cls, generation_config: Any, kwargs: dict[str, Any], prompt_len: int,
                logits_processor: Any = None) -> GenerationSettings:
        for name, value in kwargs.items():
            problem = _kind_problem(name, value)
            if problem:
                raise TypeError(f"generate(): {problem}")
        config = copy.deepcopy(generation_config) if generation_config is not None else GenerationDefaults()
        unknown = config.update(**kwargs)
        unused = sorted(k for k in (unknown or {}) if k != "generator")
        if unused:
            raise TypeError(f"generate() got arguments it does not know: {unused}; check their spelling "
                            "(transformers-only arguments such as logits_processor are not supported)")
        v = {name: _config_value(config, name) for name in (*GenerationDefaults.names(), *RULE_FIELDS, *OUTPUTS)}
        for name, value in v.items():
            problem = _kind_problem(name, value)
            if problem:
                raise TypeError(f"generate(): the generation config's {problem}")
        _refuse_unsupported(config, kwargs)
        eos = v["eos_token_id"]
        eos_ids = () if eos is None else (tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else (int(eos),))
        pad = _or(v["pad_token_id"], eos_ids[0] if eos_ids else 0)
        do_sample = bool(v["do_sample"])
        sampling = SamplingParams(
            do_sample=do_sample,
            temperature=float(_or(v["temperature"], 1.0)) if do_sample else 1.0,
            top_k=int(_or(v["top_k"], 50)) if do_sample else 0,  # 50: transformers' default top_k
            top_p=float(_or(v["top_p"], 1.0)) if do_sample else 1.0,
        )
        outputs = {name: bool(v[name]) for name in OUTPUTS}
        rules = _rules(v, logits_processor, always=outputs["output_scores"] or outputs["output_logits"])
        return cls(max_new_tokens=_max_new_tokens(v["max_new_tokens"], v["max_length"], prompt_len),
                   sampling=sampling, eos_token_ids=eos_ids, pad_token_id=int(pad),
                   num_return_sequences=_num_return_sequences(v["num_return_sequences"], do_sample), rules=rules,
                   **outputs)


OUTPUTS = ("output_scores", "output_logits", "return_dict_in_generate")
# The GenerationConfig fields that become LogitsRules (logits_rules.py; the OpenAI penalties are the Engine's).
RULE_FIELDS = tuple(f.name for f in dataclasses.fields(LogitsRules)
                    if f.name not in ("presence_penalty", "frequency_penalty", "logits_processor", "always"))
_AS_LIST = {"bad_words_ids": lambda words: [list(w) for w in words], "suppress_tokens": list,
            "begin_suppress_tokens": list, "forced_eos_token_id": lambda e: list(e) if isinstance(e, (list, tuple)) else e}


def _rules(v: dict[str, Any], logits_processor: Any, always: bool) -> LogitsRules:
    """The rules from resolved GenerationConfig values (None: transformers' off value)."""
    defaults = {f.name: f.default for f in dataclasses.fields(LogitsRules)}
    values = {name: defaults[name] if v[name] is None else _AS_LIST.get(name, lambda x: x)(v[name])
              for name in RULE_FIELDS}
    # With min_new_tokens set, transformers replaces min_length by min_new_tokens + the prompt width,
    # the bound min_new_tokens enforces anyway.
    if v["min_new_tokens"] is not None:
        values["min_length"] = 0
    custom = list(logits_processor) if logits_processor else None
    return LogitsRules(**values, logits_processor=custom, always=always)


def check_inputs(input_ids: Any, attention_mask: Any, vocab_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (rows, length) int64, attention_mask of that shape), or one clear error for inputs that
    transformers would fail on deep inside, or that a cast would silently turn into other tokens."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"generate(): input_ids is a {type(input_ids).__name__}, not a torch.Tensor; like "
                        "transformers' generate, pass torch.tensor(ids) or the tokenizer's return_tensors='pt' output")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"generate(): input_ids has dtype {input_ids.dtype}; token ids are integers: pass a "
                        "torch.long tensor (casting floats or bools would run other tokens than meant)")
    ids = input_ids.unsqueeze(0) if input_ids.dim() == 1 else input_ids
    shape = tuple(input_ids.shape)
    if ids.dim() != 2:
        raise ValueError(f"generate(): input_ids has shape {shape}; pass (batch, length) token ids, a row a prompt")
    if ids.shape[0] == 0:
        raise ValueError(f"generate(): input_ids has shape {shape}: no prompts; pass at least one row")
    if ids.shape[1] == 0:
        raise ValueError(f"generate(): input_ids has shape {shape}: the prompts are empty; "
                         "give each at least one token")
    if attention_mask is None:
        mask = torch.ones_like(ids, dtype=torch.bool)
    else:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"generate(): attention_mask is a {type(attention_mask).__name__}, not a torch.Tensor; "
                            "pass the tensor the tokenizer returned with input_ids")
        if tuple(attention_mask.shape) != shape:
            raise ValueError(f"generate(): attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                             f"shape {shape}; pass the mask that came with these ids (one entry per token)")
        mask = attention_mask.reshape(ids.shape).to(ids.device).bool()
    _check_vocabulary(ids, mask, vocab_size)
    return ids.long(), mask


def _check_vocabulary(ids: torch.Tensor, mask: torch.Tensor, vocab_size: int | None) -> None:
    fed = ids[mask]  # padding is never fed to the model, whatever it holds
    if fed.numel() == 0:
        return  # all-padding rows are refused by name later
    lo, hi = int(fed.min()), int(fed.max())
    if lo >= 0 and (vocab_size is None or hi < vocab_size):
        return
    bad = ids < 0 if vocab_size is None else (ids < 0) | (ids >= vocab_size)
    row, col = (int(i) for i in (bad & mask).nonzero()[0])
    allowed = "ids are >= 0" if vocab_size is None else f"vocabulary is [0, {vocab_size})"
    raise ValueError(f"generate(): input_ids[{row}, {col}] = {int(ids[row, col])} is not a token of this model (its "
                     f"{allowed}); check that the tokenizer belongs to this model")


def check_fits_runtime(settings: GenerationSettings, runtime: DecoderRuntime) -> None:
    config = runtime.config
    if config.on_device_sampling:
        needs_logits = settings.rules.active(settings.eos_token_ids, settings.sampling.do_sample)
        needs_logits.update({name: True for name in ("output_scores", "output_logits") if getattr(settings, name)})
        if needs_logits:
            named = ", ".join(f"{k}={v!r}" for k, v in needs_logits.items())
            raise ValueError(f"generate(): {named} needs the logits on the host, but this artifact samples on the "
                             "device (its graphs return token ids, which do only temperature, top_k and top_p); re-export it "
                             "without --on-device-sampling, or leave these unset")
        if settings.sampling.do_sample and settings.sampling.top_k > config.max_topk:
            raise ValueError(f"generate(): top_k={settings.sampling.top_k} exceeds max_topk={config.max_topk}, the "
                             "most candidates this artifact's on-device sampling keeps; lower top_k, or re-export "
                             "with a larger --max_topk")
    vocab = runtime.vocab_size
    for name, ids in settings.rules.token_ids().items():
        bad = [t for t in ids if t < 0 or (vocab is not None and t >= vocab)]
        if bad:
            raise ValueError(f"generate(): {name} names token {bad[0]}, which is not in this model's vocabulary "
                             f"[0, {vocab}); check the ids")
