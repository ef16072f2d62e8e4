"""Errors the engine raises. Each names the field, the value, what is allowed and the fix."""

from __future__ import annotations

from typing import Any


class RequestError(ValueError):
    """A request the engine refuses. Raised by `add_request` before the request touches the engine,
    so a bad request never costs a slot and never disturbs the requests already running."""

    def __init__(self, field: str, value: Any, allowed: str, fix: str):
        self.field, self.value, self.allowed, self.fix = field, value, allowed, fix
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"request field '{field}' = {shown} is not allowed. Allowed: {allowed}. Fix: {fix}.")


class QueueFullError(RequestError):
    """More requests waiting than `EngineConfig.max_queued` allows."""


class EngineClosedError(RuntimeError):
    """The engine was shut down; it accepts no more requests."""
