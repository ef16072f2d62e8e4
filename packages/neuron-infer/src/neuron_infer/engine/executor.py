"""BatchExecutor: prefill one slot or decode every busy slot, and pick each slot's next token.

This is the layer both the Engine (its own scheduler) and the vLLM plugin (vLLM's scheduler)
drive: it knows slots, positions and samplers, not requests, queues or stop conditions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

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

    def acquire(self) -> int | None:
        if not self._free:
            return None
        slot = min(self._free)
        self._free.remove(slot)
        return slot

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
    def __init__(self, runtime: DecoderRuntime):
        self.runtime = runtime
        self.config = runtime.config
        self.on_device_sampling = self.config.on_device_sampling

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    def prefill(self, slot: int, prompt: list[int] | torch.Tensor, sampler: TokenSampler) -> StepResult:
        """Run the prompt through the context-encoding graph into `slot`'s KV rows; pick the first token."""
        ids = torch.as_tensor(prompt, dtype=torch.long)
        if self.on_device_sampling:
            out = self.runtime.prefill(ids, slot, sampler.device_row(), sampler.uniform())
            return StepResult(int(out.reshape(-1)[0]), None)
        logits = self.runtime.prefill(ids, slot).float()
        return StepResult(sampler.pick(logits), logits)

    def decode(self, entries: Mapping[int, DecodeEntry],
               hold: Mapping[int, tuple[int, int]] | None = None) -> dict[int, StepResult]:
        """One token-generation step over the whole compiled batch; returns a token for each entry.

        Every row runs, and every row writes its KV cache at its position. A free row runs token 0
        at position 0, garbage the next prefill of that slot overwrites. A row that holds a live
        sequence but samples nothing now (vLLM prefilled it this step, or skipped it) must not get
        that garbage in its row 0: `hold` gives it (last token, its position), so it rewrites exactly
        the KV entry its next real decode will write, and its output is dropped.
        """
        fewer = self._decode_some(entries)
        if fewer is not None:
            return fewer
        B = self.batch_size
        tokens = torch.zeros(B, dtype=torch.long)
        positions = torch.zeros(B, dtype=torch.long)
        for slot, (token, position) in (hold or {}).items():
            tokens[slot], positions[slot] = token, position
        for slot, e in entries.items():
            tokens[slot], positions[slot] = e.token, e.position
        if self.on_device_sampling:
            rows = torch.tensor([[1.0, 1.0, 1.0]] * B)
            rand = torch.zeros(B)
            for slot, e in entries.items():
                rows[slot], rand[slot] = e.sampler.device_row(), e.sampler.uniform()[0]
            out = self.runtime.decode(tokens, positions, rows, rand).reshape(-1)
            return {slot: StepResult(int(out[slot]), None) for slot in entries}
        logits = self.runtime.decode(tokens, positions).float()
        return {slot: StepResult(e.sampler.pick(logits[slot]), logits[slot]) for slot, e in entries.items()}

    def _decode_some(self, entries: Mapping[int, DecodeEntry]) -> dict[int, StepResult] | None:
        """The step through a graph over just these slots (others untouched, so nothing to hold), when the
        artifact has one that holds them; else None."""
        if len(entries) >= self.batch_size or self.runtime.rows_for(len(entries)) is None:
            return None
        slots = sorted(entries)
        tokens = torch.tensor([entries[s].token for s in slots])
        positions = torch.tensor([entries[s].position for s in slots])
        if self.on_device_sampling:
            rows = torch.stack([entries[s].sampler.device_row().view(3) for s in slots])
            rand = torch.cat([entries[s].sampler.uniform().view(1) for s in slots])
            out = self.runtime.decode_slots(slots, tokens, positions, rows, rand).reshape(-1)
            return {slot: StepResult(int(out[i]), None) for i, slot in enumerate(slots)}
        logits = self.runtime.decode_slots(slots, tokens, positions).float()
        return {slot: StepResult(entries[slot].sampler.pick(logits[i]), logits[i]) for i, slot in enumerate(slots)}
