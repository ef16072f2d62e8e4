"""What a caller gets back: streamed RequestOutputs, a final Completion, and a RequestHandle."""

from __future__ import annotations

import enum
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neuron_infer.engine.engine import Engine


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens, or the artifact's sequence_length
    CANCELLED = "cancelled"
    ERROR = "error"  # the model step failed; the engine stays usable


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """One streamed event: the tokens (and text) produced since the previous event of this request."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str = ""
    finish_reason: FinishReason | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class Completion:
    """Everything a request produced, assembled from its outputs."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    error: str | None = None


OutputCallback = Callable[[RequestOutput], None]


class RequestHandle:
    """Returned by `Engine.add_request`. Iterate it for streamed outputs, or call `result()`.

    Without a running engine loop thread, iterating or waiting drives `engine.step()` itself, so
    single-threaded code needs no thread at all.
    """

    def __init__(self, engine: Engine, request_id: str, prompt_token_ids: list[int],
                 callback: OutputCallback | None = None):
        self.request_id = request_id
        self.completion = Completion(request_id, list(prompt_token_ids))
        self._engine = engine
        self._callback = callback
        self._queue: queue.Queue[RequestOutput] = queue.Queue()
        self._done = threading.Event()

    # Called by the engine, on the thread that runs step().
    def _deliver(self, out: RequestOutput) -> None:
        c = self.completion
        c.token_ids.extend(out.token_ids)
        c.text += out.text
        if out.finished:
            c.finish_reason, c.error = out.finish_reason, out.error
        self._queue.put(out)
        if out.finished:
            self._done.set()  # before the callback: a raising callback must not leave waiters hanging
        if self._callback is not None:
            self._callback(out)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> bool:
        return self._engine.cancel(self.request_id)

    def __iter__(self) -> Iterator[RequestOutput]:
        while True:
            out = self._next()
            yield out
            if out.finished:
                return

    def _next(self, timeout: float | None = None) -> RequestOutput:
        while True:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            if not self._engine.loop_running:
                self._engine._drive(self.request_id)
                continue
            try:
                return self._queue.get(timeout=timeout if timeout is not None else 0.5)
            except queue.Empty:
                if timeout is not None:
                    raise TimeoutError(f"request {self.request_id}: no output within {timeout} s") from None

    def result(self, timeout: float | None = None) -> Completion:
        """Wait until the request finishes (driving the engine when no loop thread runs)."""
        while not self._done.is_set():
            if self._engine.loop_running:
                if not self._done.wait(timeout):
                    raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
            else:
                self._engine._drive(self.request_id)
        return self.completion
