"""transformers-style `generate` over a DecoderRuntime, stepped through the same BatchExecutor as the Engine.

Each prompt row is stripped of its padding (from `attention_mask`) and prefilled alone into its own
slot, so left- and right-padded inputs give the same tokens. Rows beyond the compiled batch run in
further chunks; a smaller batch leaves slots idle.

Arguments and inputs are resolved and checked in generation_args.py.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from neuron_infer.engine.executor import BatchExecutor
from neuron_infer.generation_args import GenerationSettings, check_fits_runtime, check_inputs
from neuron_infer.runtime import DecoderRuntime
from neuron_infer.sampling import Processors, choose, pick_tokens


def generate(
    runtime: DecoderRuntime,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    settings: GenerationSettings,
    streamer: Any = None,
    stopping_criteria: Any = None,
    generator: torch.Generator | None = None,
) -> Any:
    """The prompt ids followed by the new tokens (rows, width); with return_dict_in_generate, transformers'
    GenerateDecoderOnlyOutput (sequences, and the per-step scores and logits when asked for)."""
    input_ids, mask = check_inputs(input_ids, attention_mask, runtime.vocab_size)
    check_fits_runtime(settings, runtime)
    n = settings.num_return_sequences
    if n > 1:  # transformers' order: the n copies of prompt i are rows i*n .. i*n+n-1
        input_ids, mask = input_ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
    prompts = [row[m] for row, m in zip(input_ids, mask)]
    config = runtime.config
    for i, p in enumerate(prompts):
        if p.numel() == 0:
            raise ValueError(f"prompt {i} is empty (its attention_mask is all zeros)")
        if p.numel() > runtime.max_prompt_length:
            if config.chunk_buckets:
                raise ValueError(f"prompt {i} has {p.numel()} tokens, but this artifact holds at most "
                                 f"{runtime.max_prompt_length} (sequence_length - 1, leaving one position to generate "
                                 "into); shorten the prompt or re-export with a larger --sequence_length")
            raise ValueError(
                f"prompt {i} has {p.numel()} tokens, but this artifact's max_context_length is "
                f"{config.max_context_length} and it has no chunked-prefill graphs; shorten the prompt or re-export "
                "with a larger --max_context_length (or with --chunk-buckets, for prompts up to sequence_length - 1)"
            )
    room = config.sequence_length - max(p.numel() for p in prompts)
    max_new = settings.max_new_tokens
    if max_new > room:
        warnings.warn(
            f"max_new_tokens={max_new} exceeds the room left by the longest prompt in sequence_length="
            f"{config.sequence_length}; generating at most {room} tokens", stacklevel=3,
        )
        max_new = room
    processors = _processors(settings, input_ids.shape[1])
    decoder = _Decoder(BatchExecutor(runtime), settings, max_new, processors, streamer, stopping_criteria, generator)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    B = runtime.batch_size
    chunks = [decoder.run(prompts[s : s + B], input_ids[s : s + B], mask[s : s + B]) for s in range(0, len(prompts), B)]
    if streamer is not None:
        streamer.end()
    width = max(c.shape[1] for c in chunks)
    padded = [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=settings.pad_token_id) for c in chunks]
    sequences = torch.cat(padded, dim=0)
    if not settings.return_dict_in_generate:
        return sequences
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    steps = width - input_ids.shape[1]
    return GenerateDecoderOnlyOutput(
        sequences=sequences,
        scores=_per_step(decoder.scores, steps) if settings.output_scores else None,
        logits=_per_step(decoder.logits, steps) if settings.output_logits else None,
    )


def _processors(settings: GenerationSettings, prompt_width: int) -> Processors | None:
    """The request's LogitsProcessorList; transformers' own argument checks come back naming generate()."""
    max_length = prompt_width + settings.max_new_tokens  # transformers' max_length once max_new_tokens is known
    try:
        return settings.rules.build(prompt_width, settings.eos_token_ids, settings.sampling, max_length)
    except ValueError as err:
        raise ValueError(f"generate(): {err} (raised by transformers' logits processor for these arguments)") from None


def _per_step(chunks: list[list[torch.Tensor]], steps: int) -> tuple[torch.Tensor, ...]:
    """Each chunk's per-step (rows, vocab) tensors -> one (all rows, vocab) tensor per step, like transformers.
    A chunk that finished before the longest has no scores for the later steps: those rows are NaN."""
    out = []
    for step in range(steps):
        parts = [c[step] if step < len(c) else torch.full_like(c[0], float("nan")) for c in chunks]
        out.append(torch.cat(parts, dim=0))
    return tuple(out)


@dataclass(slots=True)
class _Decoder:
    """One generate() call's fixed parts; `run` decodes one chunk of at most batch_size rows."""

    executor: BatchExecutor
    settings: GenerationSettings
    max_new: int
    processors: Processors | None
    streamer: Any
    stopping_criteria: Any
    generator: torch.Generator | None
    scores: list[list[torch.Tensor]] = field(default_factory=list)  # per chunk, per step: (rows, vocab)
    logits: list[list[torch.Tensor]] = field(default_factory=list)

    def run(self, prompts: list[torch.Tensor], prefix: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        executor, settings = self.executor, self.settings
        n_rows, B = len(prompts), executor.batch_size
        on_device = executor.on_device_sampling
        self.scores.append([])
        self.logits.append([])
        row_params = torch.tensor([settings.sampling.as_row()] * B) if on_device else None
        # What transformers' logits processors see: the prompt padded on the left (where transformers wants
        # the padding; left-padded input is unchanged), then the new tokens.
        history = _left_aligned(prefix, mask) if self.processors is not None else None
        tokens = torch.zeros(B, dtype=torch.long)
        tokens[:n_rows] = self._first_tokens(prompts, row_params, history)
        positions = torch.zeros(B, dtype=torch.long)
        positions[:n_rows] = torch.tensor([p.numel() for p in prompts])
        generated = [tokens[:n_rows].clone()]
        history = _extend(history, generated[-1])
        done = _is_eos(tokens[:n_rows], settings.eos_token_ids)
        if self.streamer is not None:
            self.streamer.put(tokens[:n_rows].clone())
        for _ in range(self.max_new - 1):
            done |= _stopped(self.stopping_criteria, prefix, generated, n_rows)
            if done.all():
                break
            # Slot i holds row i; the executor picks a sub-batch graph over just these slots when there is one.
            out = executor.decode_raw(list(range(n_rows)), tokens[:n_rows], positions[:n_rows],
                                      row_params[:n_rows] if on_device else None, self._rand(n_rows))
            nxt = self._pick(out, n_rows, history)
            nxt = torch.where(done, torch.full_like(nxt, settings.pad_token_id), nxt)
            generated.append(nxt)
            history = _extend(history, nxt)
            if self.streamer is not None:
                self.streamer.put(nxt.clone())
            done |= _is_eos(nxt, settings.eos_token_ids)
            tokens[:n_rows] = nxt
            positions[:n_rows] += 1
        if self.max_new <= 0:
            generated = []
        new = torch.stack(generated, dim=1) if generated else torch.zeros(n_rows, 0, dtype=torch.long)
        return torch.cat([prefix.long(), new], dim=1)

    def _first_tokens(self, prompts: list[torch.Tensor], row_params: torch.Tensor | None,
                      history: torch.Tensor | None) -> torch.Tensor:
        """Prefill slot i with prompt i and pick each row's first token. A prompt longer than the largest bucket
        is encoded through the chunked-prefill graphs, which return logits even on an on-device-sampling artifact:
        there, every row's first token is then picked on the host with the same settings (one batched draw)."""
        executor, limit = self.executor, self.executor.config.max_context_length
        host_pick = executor.on_device_sampling and any(p.numel() > limit for p in prompts)
        outs = []
        for slot, prompt in enumerate(prompts):
            if executor.on_device_sampling and not host_pick:
                outs.append(executor.prefill_raw(slot, prompt, row_params[slot], self._rand(1)))
            else:
                outs.append(executor.prefill_logits(slot, prompt))
        if host_pick:
            return pick_tokens(torch.stack(outs), self.settings.sampling, self.generator, None, None)
        return self._pick(torch.stack(outs), len(prompts), history)

    def _rand(self, rows: int) -> torch.Tensor | None:
        return torch.rand(rows, generator=self.generator) if self.executor.on_device_sampling else None

    def _pick(self, out: torch.Tensor, rows: int, history: torch.Tensor | None) -> torch.Tensor:
        if self.executor.on_device_sampling:
            return out.reshape(-1)[:rows].long()
        logits = out.reshape(-1, out.shape[-1])[:rows].float()
        if self.settings.output_logits:
            self.logits[-1].append(logits.clone())
        if not self.settings.output_scores:
            return pick_tokens(logits, self.settings.sampling, self.generator, self.processors, history)
        scores = self.processors(history, logits)  # `output_scores` always builds the list
        self.scores[-1].append(scores)
        return choose(scores, self.settings.sampling.do_sample, self.generator)


def _left_aligned(prefix: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    order = mask.long().argsort(dim=1, stable=True)  # padding first, both parts in their own order
    return prefix.long().gather(1, order)


def _extend(history: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor | None:
    return None if history is None else torch.cat([history, tokens.view(-1, 1)], dim=1)


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
