"""Incremental detokenization and stop strings.

The generated ids are decoded whole at every step (sequences are at most a few thousand tokens,
and a full decode is the only way to get byte-fallback and merge rules exactly right). Text is
released to the caller only when it is final: a trailing replacement character (an incomplete
UTF-8 sequence) is held back, and so is any tail that could still grow into a stop string, so a
streamed answer never shows text that the stop string later removes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class TextState:
    tokenizer: Any
    stop: tuple[str, ...]
    skip_special_tokens: bool = True
    token_ids: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the text already released
    stopped_at: int | None = None  # index in the text where a stop string begins

    def add(self, token: int) -> str:
        """Append one token; return newly final text (possibly ''). Sets `stopped_at` on a stop string."""
        self.token_ids.append(token)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=self.skip_special_tokens)
        if self.stop:
            # Only the new tail (plus room for a stop string straddling it) needs searching.
            start = max(0, self.emitted - max(map(len, self.stop)))
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.stopped_at = min(hits)
                return self._release(text, self.stopped_at)
        end = len(text)
        if text.endswith("\ufffd"):
            end -= 1
        end -= _partial_stop_suffix(text[:end], self.stop)
        return self._release(text, end)

    def finish(self) -> str:
        """Everything not yet released (the stream ended for a reason other than a stop string)."""
        if self.stopped_at is not None:
            return ""
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=self.skip_special_tokens)
        return self._release(text, len(text))

    def _release(self, text: str, end: int) -> str:
        if end <= self.emitted:
            return ""
        out = text[self.emitted : end]
        self.emitted = end
        return out


def _partial_stop_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest
