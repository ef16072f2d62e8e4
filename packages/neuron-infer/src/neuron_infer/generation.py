"""transformers-style `generate` over a DecoderRuntime.

Each prompt row is stripped of its padding (from `attention_mask`) and prefilled alone into its own
slot, so left- and right-padded inputs give the same tokens. Rows beyond the compiled batch run in
further chunks; a smaller batch leaves slots idle.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuron_infer.runtime import DecoderRuntime
from neuron_infer.sampling import SamplingParams, select


@dataclass(kw_only=True)
class GenerationDefaults:
    """The generation_config.json fields generate() reads, parsed without importing transformers.

    It quacks like transformers.GenerationConfig for GenerationSettings.resolve: the same attribute
    names, the same None defaults (transformers 5), and `update` returning the arguments it does not know.
    """

    max_length: int | None = None
    max_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    @classmethod
    def from_dir(cls, root: Path) -> GenerationDefaults:
        path = Path(root) / "generation_config.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def covers(cls, kwargs: dict[str, Any]) -> bool:
        names = {f.name for f in dataclasses.fields(cls)}
        return all(k in names for k in kwargs)

    def update(self, **kwargs: Any) -> dict[str, Any]:
        unknown = {}
        for key, value in kwargs.items():
            if hasattr(self, key):
                setattr(self, key, value)
            else:
                unknown[key] = value
        return unknown


@dataclass(kw_only=True, slots=True)
class GenerationSettings:
    max_new_tokens: int
    sampling: SamplingParams
    eos_token_ids: tuple[int, ...]
    pad_token_id: int

    @classmethod
    def resolve(cls, generation_config: Any, kwargs: dict[str, Any], prompt_len: int) -> GenerationSettings:
        import copy

        config = copy.deepcopy(generation_config)
        unknown = config.update(**kwargs) if config is not None else kwargs
        unused = {k: v for k, v in (unknown or {}).items() if k not in ("generator",)}
        if unused:
            raise TypeError(f"generate() got unsupported arguments: {sorted(unused)}")
        max_new = config.max_new_tokens
        if max_new is None:
            max_new = max((config.max_length or 20) - prompt_len, 0)
        eos = config.eos_token_id
        eos_ids = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),))
        pad = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        do_sample = bool(config.do_sample)
        sampling = SamplingParams(
            do_sample=do_sample,
            temperature=float(config.temperature if config.temperature is not None else 1.0) if do_sample else 1.0,
            top_k=int(config.top_k or 0) if do_sample else 0,
            top_p=float(config.top_p if config.top_p is not None else 1.0) if do_sample else 1.0,
        )
        return cls(max_new_tokens=int(max_new), sampling=sampling, eos_token_ids=eos_ids, pad_token_id=int(pad))


def generate(
    runtime: DecoderRuntime,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    settings: GenerationSettings,
    streamer: Any = None,
    stopping_criteria: Any = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
    prompts = [row[m.bool()] for row, m in zip(input_ids, mask)]
    config = runtime.config
    for i, p in enumerate(prompts):
        if p.numel() == 0:
            raise ValueError(f"prompt {i} is empty (its attention_mask is all zeros)")
        if p.numel() > config.max_context_length:
            raise ValueError(
                f"prompt {i} has {p.numel()} tokens, but this artifact's max_context_length is "
                f"{config.max_context_length}; shorten the prompt or re-export with a larger --max_context_length"
            )
    room = config.sequence_length - max(p.numel() for p in prompts)
    max_new = settings.max_new_tokens
    if max_new > room:
        warnings.warn(
            f"max_new_tokens={max_new} exceeds the room left by the longest prompt in sequence_length="
            f"{config.sequence_length}; generating at most {room} tokens", stacklevel=3,
        )
        max_new = room
    if streamer is not None:
        streamer.put(input_ids.cpu())
    chunks = []
    B = runtime.batch_size
    for start in range(0, len(prompts), B):
        rows = prompts[start : start + B]
        prefix = input_ids[start : start + B]
        chunks.append(_generate_chunk(runtime, rows, prefix, settings, max_new, streamer, stopping_criteria, generator))
    if streamer is not None:
        streamer.end()
    width = max(c.shape[1] for c in chunks)
    padded = [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=settings.pad_token_id) for c in chunks]
    return torch.cat(padded, dim=0)


def _generate_chunk(runtime, prompts, prefix, settings, max_new, streamer, stopping_criteria, generator):
    n_rows, B = len(prompts), runtime.batch_size
    on_device = runtime.config.on_device_sampling
    row_params = torch.tensor([settings.sampling.as_row()] * B) if on_device else None

    def pick(out: torch.Tensor, rows: int) -> torch.Tensor:
        if on_device:
            return out.reshape(-1)[:rows].long()
        return select(out.reshape(-1, out.shape[-1])[:rows].float(), settings.sampling, generator)

    def rand(rows: int) -> torch.Tensor | None:
        return torch.rand(rows, generator=generator) if on_device else None

    first = []
    for slot, prompt in enumerate(prompts):
        out = runtime.prefill(prompt, slot, row_params[slot] if on_device else None, rand(1))
        first.append(pick(out, 1)[0])
    tokens = torch.zeros(B, dtype=torch.long)
    tokens[:n_rows] = torch.stack(first)
    positions = torch.zeros(B, dtype=torch.long)
    positions[:n_rows] = torch.tensor([p.numel() for p in prompts])
    generated = [tokens[:n_rows].clone()]
    done = torch.zeros(n_rows, dtype=torch.bool)
    done |= _is_eos(tokens[:n_rows], settings.eos_token_ids)
    if streamer is not None:
        streamer.put(tokens[:n_rows].clone())
    for _ in range(max_new - 1):
        done |= _stopped(stopping_criteria, prefix, generated, n_rows)
        if done.all():
            break
        if n_rows < B and runtime.rows_for(n_rows) is not None:  # a graph over just these rows
            out = runtime.decode_slots(list(range(n_rows)), tokens[:n_rows], positions[:n_rows],
                                       row_params[:n_rows] if on_device else None, rand(n_rows))
        else:
            out = runtime.decode(tokens, positions, row_params, rand(B))
        nxt = pick(out, n_rows)
        nxt = torch.where(done, torch.full_like(nxt, settings.pad_token_id), nxt)
        generated.append(nxt)
        if streamer is not None:
            streamer.put(nxt.clone())
        done |= _is_eos(nxt, settings.eos_token_ids)
        tokens[:n_rows] = nxt
        positions[:n_rows] += 1
    if max_new <= 0:
        generated = []
    new = torch.stack(generated, dim=1) if generated else torch.zeros(n_rows, 0, dtype=torch.long)
    return torch.cat([prefix.long(), new], dim=1)


def _is_eos(tokens: torch.Tensor, eos_ids: tuple[int, ...]) -> torch.Tensor:
    if not eos_ids:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return torch.isin(tokens, torch.tensor(eos_ids))


def _stopped(stopping_criteria, prefix: torch.Tensor, generated: list[torch.Tensor], rows: int) -> torch.Tensor:
    """Per-row stop flags from transformers-style StoppingCriteria (called with ids so far, no scores)."""
    if not stopping_criteria:
        return torch.zeros(rows, dtype=torch.bool)
    ids = torch.cat([prefix.long(), torch.stack(generated, dim=1)], dim=1)
    result = stopping_criteria(ids, None)
    if isinstance(result, torch.Tensor):
        return result.bool().reshape(-1).expand(rows) if result.numel() == 1 else result.bool().reshape(-1)[:rows]
    return torch.full((rows,), bool(result))
