"""PrefixCache: which tokens each slot's KV rows hold, so that a prompt sharing a prefix with one
already encoded reuses those rows instead of encoding the prefix again.

A slot's rows keep what was encoded into them after its request finishes, until the slot is given
to another request, so finished requests stay reusable (as vLLM keeps freed blocks until it evicts
them). A free slot is handed out least recently used first, so a popular prefix survives longest.

Reuse needs the artifact's chunked-prefill graphs: the rest of the prompt is encoded at an offset
into rows that already hold the prefix, either in the same slot (a free slot that held it) or in a
fresh slot after copying the prefix's rows over (`BatchExecutor.copy_kv`).

The cache is bookkeeping only: callers keep the rows it describes intact. In particular a
full-batch decode step writes every row of the batch, so free rows that hold a prefix must be
given their own last entry to rewrite (`hold_rows`), never the default token 0 at position 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrefixPlan:
    slot: int  # the slot the new request gets
    reuse: int  # prompt tokens whose KV rows are already in place (after the copy, if any)
    source: int | None  # copy rows [0, reuse) from this slot first; None: they are in `slot` already


@dataclass(slots=True)
class PrefixStats:
    queries: int = 0  # prompts looked up
    hits: int = 0  # prompts that reused at least `min_tokens` tokens
    prompt_tokens: int = 0  # tokens of every prompt looked up
    hit_tokens: int = 0  # of those, tokens not encoded again
    copies: int = 0  # hits whose rows were copied from another slot

    @property
    def hit_rate(self) -> float:
        """Fraction of prompt tokens served from the cache (vLLM reports the same ratio)."""
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists (compares 64-token slices first)."""
    n, i = min(len(a), len(b)), 0
    while i + 64 <= n and a[i:i + 64] == b[i:i + 64]:
        i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """Per slot: the token list whose first `n` tokens the slot's KV rows hold (positions [0, n)).

    Token lists are held by reference and must only ever be appended to (a request's prompt plus
    what it generated), so a decode step costs one increment (`advance`), not a copy.
    """

    def __init__(self, slots: int, *, min_tokens: int = 16):
        if min_tokens < 1:
            raise ValueError(f"min_tokens={min_tokens}: a reuse must cover at least 1 token")
        self.min_tokens = min_tokens
        self._tokens: list[Sequence[int]] = [() for _ in range(slots)]
        self._held = [0] * slots
        self._last_use = [0] * slots
        self._clock = 0
        self.stats = PrefixStats()

    # ---- what the rows hold ------------------------------------------------------------------
    def held(self, slot: int) -> int:
        return self._held[slot]

    def record(self, slot: int, tokens: Sequence[int], n: int) -> None:
        """The slot's rows now hold tokens[:n] (after a prefill or chunk)."""
        if n > len(tokens):
            raise ValueError(f"slot {slot}: cannot hold {n} tokens of a {len(tokens)}-token list")
        self._tokens[slot], self._held[slot] = tokens, n
        self._clock += 1
        self._last_use[slot] = self._clock

    def advance(self, slot: int, n: int) -> None:
        """A decode step wrote the slot's row at position n - 1: it now holds its tokens[:n]."""
        self._held[slot] = min(n, len(self._tokens[slot]))

    def forget(self, slot: int) -> None:
        """The slot's rows no longer hold anything reusable (overwritten, or a failed step)."""
        self._tokens[slot], self._held[slot] = (), 0

    def hold_rows(self, slots: Iterable[int]) -> dict[int, tuple[int, int]]:
        """(last held token, its position) for each of `slots` that holds something: a decode step
        that must run those rows rewrites that one entry with the values it already has."""
        return {s: (int(self._tokens[s][self._held[s] - 1]), self._held[s] - 1) for s in slots if self._held[s]}

    # ---- placing a new prompt ----------------------------------------------------------------
    def plan(self, prompt: Sequence[int], free: Sequence[int], *, enabled: bool = True) -> PrefixPlan:
        """Choose a free slot for `prompt` and how much of it is already encoded somewhere.

        At least the prompt's last token is always encoded (its logits pick the first new token).
        Without a reuse of `min_tokens` or more, the least recently used free slot is chosen.
        """
        if not free:
            raise ValueError("no free slot to plan a prompt into")
        if not enabled:
            return PrefixPlan(min(free), 0, None)  # the lowest free slot, as without a cache
        self.stats.queries += 1
        self.stats.prompt_tokens += len(prompt)
        best, reuse, cap = None, 0, len(prompt) - 1
        for slot, held in enumerate(self._held):
            if held <= reuse:
                continue
            n = min(common_prefix(self._tokens[slot][:held], prompt), cap)
            if n > reuse or (n == reuse and n and best not in free and slot in free):
                best, reuse = slot, n
        if best is None or reuse < self.min_tokens:
            return PrefixPlan(self._least_recent(free), 0, None)
        self.stats.hits += 1
        self.stats.hit_tokens += reuse
        if best in free:
            return PrefixPlan(best, reuse, None)
        self.stats.copies += 1
        return PrefixPlan(self._least_recent(free), reuse, best)

    def _least_recent(self, free: Sequence[int]) -> int:
        # Empty rows first, then the least recently filled: keep what is most likely to be asked again.
        return min(free, key=lambda s: (self._held[s] > 0, self._last_use[s], s))
