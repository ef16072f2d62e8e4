"""BatchExecutor: prefill one slot or decode every busy slot, and pick each slot's next token.

This is the layer both the Engine (its own scheduler) and the vLLM plugin (vLLM's scheduler)
drive: it knows slots, positions and samplers, not requests, queues or stop conditions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from neuron_cache.signature import GREEDY_ROW
from neuron_infer.engine.sampler import TokenSampler
from neuron_infer.runtime import DecoderRuntime


@dataclass(frozen=True, slots=True)
class DecodeEntry:
    token: int  # the slot's last token, fed to the model now
    position: int  # where that token sits in the sequence (= tokens already in the slot's KV cache)
    sampler: TokenSampler


@dataclass(frozen=True, slots=True)
class StepResult:
    token: int
    logits: torch.Tensor | None  # (vocab,) float32 raw logits; None when the graph samples on device


class SlotPool:
    """Which compiled batch rows are free. Lowest free slot first, so runs are reproducible."""

    def __init__(self, size: int):
        self.size = size
        self._free = set(range(size))

    def acquire(self, slot: int | None = None) -> int | None:
        """Take `slot` (it must be free), or the lowest free one; None when every slot is busy."""
        if slot is not None:
            if slot not in self._free:
                raise ValueError(f"slot {slot} is not free (pool of {self.size}, free {sorted(self._free)})")
        elif not self._free:
            return None
        else:
            slot = min(self._free)
        self._free.remove(slot)
        return slot

    @property
    def free(self) -> list[int]:
        return sorted(self._free)

    def release(self, slot: int) -> None:
        if not 0 <= slot < self.size or slot in self._free:
            raise ValueError(f"slot {slot} is not held (pool of {self.size}, free {sorted(self._free)})")
        self._free.add(slot)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def busy(self) -> list[int]:
        return sorted(set(range(self.size)) - self._free)


class BatchExecutor:
    """The one driver of a runtime's graphs: generate(), the Engine and the vLLM runner all step through here.

    `prefill_raw`/`decode_raw` return what the graph returns for the given slots (logits, or tokens
    sampled on device); `prefill`/`decode` add each slot's TokenSampler on top.
    """

    def __init__(self, runtime: DecoderRuntime):
        self.runtime = runtime
        self.config = runtime.config
        self.on_device_sampling = self.config.on_device_sampling

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    # ---- raw steps: the graph's own output -----------------------------------------------------
    def prefill_raw(self, slot: int, prompt: torch.Tensor, device_row: torch.Tensor | None = None,
                    rand: torch.Tensor | None = None) -> torch.Tensor:
        """Run the prompt through the context-encoding graph into `slot`'s KV rows: logits (vocab,) at its last
        token, or the token () sampled on device (`device_row`, `rand` are then required)."""
        return self.runtime.prefill(prompt, slot, device_row, rand)  # (the runtime ignores them without it)

    def decode_raw(self, slots: list[int], tokens: torch.Tensor, positions: torch.Tensor,
                   device_rows: torch.Tensor | None = None, rand: torch.Tensor | None = None,
                   hold: Mapping[int, tuple[int, int]] | None = None) -> torch.Tensor:
        """One token-generation step over `slots` (row i: tokens[i] at positions[i]); returns the rows of
        `slots`, in that order: logits (n, vocab), or tokens (n,) sampled on device.

        When the artifact has a graph over fewer slots that holds them (`token_generation_rows<n>`), only
        those slots run and every other slot's KV rows stay untouched. Otherwise every row of the
        compiled batch runs, and every row writes its KV cache at its position. A free row runs token 0
        at position 0, garbage the next prefill of that slot overwrites. A row that holds a live
        sequence but samples nothing now (vLLM prefilled it this step, or skipped it) must not get
        that garbage in its row 0: `hold` gives it (last token, its position), so it rewrites exactly
        the KV entry its next real decode will write, and its output is dropped.
        """
        if 0 < len(slots) < self.batch_size and self.runtime.rows_for(len(slots)) is not None:
            return self.runtime.decode_slots(slots, tokens, positions, device_rows, rand)
        return self._decode_full(slots, tokens, positions, device_rows, rand, hold)

    # ---- steps with each slot's sampler --------------------------------------------------------
    def prefill(self, slot: int, prompt: list[int] | torch.Tensor, sampler: TokenSampler, start: int = 0) -> StepResult:
        """Prefill `slot` with the prompt and pick the first token.

        `prompt` is the whole prompt; the slot's KV positions [0, start) already hold prompt[:start] (a reused
        prefix, `copy_kv`, or an earlier part encoded with `encode`), and prompt[start:] is encoded now: through
        the context-encoding graph when start is 0 and the prompt fits a prompt bucket, else in chunks (the
        token is then picked on the host with the same sampler, also for an on-device-sampling artifact)."""
        ids = torch.as_tensor(prompt, dtype=torch.long).view(-1)
        if self.on_device_sampling and not start and ids.numel() <= self.config.max_context_length:
            out = self.prefill_raw(slot, ids, sampler.device_row(), sampler.uniform())
            return StepResult(int(out.reshape(-1)[0]), None)
        logits = self.prefill_logits(slot, ids, start)
        return StepResult(sampler.pick(logits), logits)

    def prefill_logits(self, slot: int, prompt: list[int] | torch.Tensor, start: int = 0) -> torch.Tensor:
        """`prefill` without picking: float32 logits (vocab,) at the prompt's last token. The context-encoding graph
        when start is 0 and the prompt fits a bucket (and the graph returns logits), else the chunked-prefill
        graphs, which return logits on every artifact."""
        ids = torch.as_tensor(prompt, dtype=torch.long).view(-1)
        if not 0 <= start < ids.numel():
            raise ValueError(f"start={start}: the prompt has {ids.numel()} tokens, and at least the last one must be "
                             "encoded now (0 <= start < len(prompt))")
        if start or ids.numel() > self.config.max_context_length or self.on_device_sampling:
            return self.encode(slot, ids[start:], start)[-1]
        return self.prefill_raw(slot, ids).float()

    def encode(self, slot: int, tokens: list[int] | torch.Tensor, start: int) -> torch.Tensor:
        """Encode tokens at positions start.. of `slot` (its KV positions [0, start) already valid) without picking
        a token: float32 logits (n, vocab), one row per token (a prompt scheduled over several steps; prompt
        logprobs). Needs the artifact's chunked-prefill graphs."""
        return self.runtime.prefill_chunk(torch.as_tensor(tokens, dtype=torch.long).view(-1), slot, start).float()

    def copy_kv(self, src: int, dst: int, length: int) -> None:
        """Copy KV positions [0, length) of slot `src` into slot `dst` (a shared prefix, then `prefill(start=length)`)."""
        self.runtime.copy_kv(src, dst, length)

    def decode(self, entries: Mapping[int, DecodeEntry],
               hold: Mapping[int, tuple[int, int]] | None = None) -> dict[int, StepResult]:
        """One token-generation step (`decode_raw`); returns a token for each entry."""
        slots = list(entries)
        tokens = torch.tensor([entries[s].token for s in slots], dtype=torch.long)
        positions = torch.tensor([entries[s].position for s in slots], dtype=torch.long)
        rows = rand = None
        if self.on_device_sampling and slots:
            rows = torch.stack([entries[s].sampler.device_row() for s in slots])
            rand = torch.cat([entries[s].sampler.uniform() for s in slots])
        out = self.decode_raw(slots, tokens, positions, rows, rand, hold)
        if self.on_device_sampling:
            out = out.reshape(-1)
            return {slot: StepResult(int(out[i]), None) for i, slot in enumerate(slots)}
        logits = out.float()
        return {slot: StepResult(entries[slot].sampler.pick(logits[i]), logits[i]) for i, slot in enumerate(slots)}

    def _decode_full(self, slots: list[int], tokens: torch.Tensor, positions: torch.Tensor,
                     rows: torch.Tensor | None, rand: torch.Tensor | None,
                     hold: Mapping[int, tuple[int, int]] | None) -> torch.Tensor:
        """Every row of the compiled batch; returns the output rows of `slots`, in that order."""
        B = self.batch_size
        index = torch.tensor(slots, dtype=torch.long)
        all_tokens = torch.zeros(B, dtype=torch.long)
        all_positions = torch.zeros(B, dtype=torch.long)
        for slot, (token, position) in (hold or {}).items():
            all_tokens[slot], all_positions[slot] = token, position
        all_tokens[index], all_positions[index] = tokens.view(-1), positions.view(-1)
        if not self.on_device_sampling:
            return self.runtime.decode(all_tokens, all_positions)[index]
        all_rows = torch.tensor([GREEDY_ROW] * B)  # greedy for rows that sample nothing
        all_rand = torch.zeros(B)
        if slots:
            all_rows[index], all_rand[index] = rows.view(len(slots), -1), rand.view(-1)
        return self.runtime.decode(all_tokens, all_positions, all_rows, all_rand).reshape(-1)[index]
