"""Engine: continuous batching over an artifact's compiled graphs.

Slots are the rows of the compiled batch. Each `step()`:
  1. applies the requests added and cancelled since the previous step (cancelling frees a slot now);
  2. admits waiting requests into free slots, prefilling each through the context-encoding graph, or,
     when part of its prompt is already in some slot's KV rows (prefix caching, prefix.py), copying
     those rows and encoding only the rest through the chunked-prefill graphs (also how prompts
     longer than the largest bucket are encoded);
  3. runs one token-generation step for every slot that has a request (the new ones included).
Requests beyond the free slots wait in FIFO order.

Threading: `add_request` and `cancel` may be called from any thread; they only append to an inbox
under a lock, so they never wait for a model step. `step()` runs on one thread at a time. Either
call `start()` for a background loop thread that steps whenever there is work (outputs then reach
callbacks and handles from that thread), or call `step()` yourself; a RequestHandle drives
`step()` on its own when no loop thread runs, so plain single-threaded code just iterates handles.
"""

from __future__ import annotations

import itertools
import json
import logging
import numbers
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from neuron_cache import Artifact
from neuron_infer.engine.errors import EngineClosedError, QueueFullError, RequestError
from neuron_infer.engine.executor import BatchExecutor, DecodeEntry, SlotPool
from neuron_infer.engine.params import RequestParams
from neuron_infer.engine.prefix import PrefixCache, PrefixStats
from neuron_infer.engine.request import Completion, FinishReason, OutputCallback, RequestHandle, RequestOutput
from neuron_infer.engine.sampler import TokenSampler
from neuron_infer.engine.stopping import TextState
from neuron_infer.runtime import DecoderRuntime, load_runtime

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class EngineConfig:
    max_queued: int | None = None  # waiting requests beyond this are refused (None: unbounded)
    max_prefills_per_step: int | None = None  # None: fill every free slot each step
    eos_token_ids: tuple[int, ...] | None = None  # None: from the artifact's generation_config.json
    # Reuse the KV rows of a prompt prefix already encoded (prefix.py). None: on when the artifact has
    # chunked-prefill graphs (they encode the rest of the prompt at an offset); True without them is an error.
    prefix_caching: bool | None = None
    min_prefix_tokens: int = 16  # shorter shared prefixes are encoded again (a copy + chunk costs more)


@dataclass(frozen=True, slots=True)
class EngineStats:
    slots: int
    free_slots: int
    running: int
    waiting: int
    steps: int
    busy_slots: tuple[int, ...]
    prefix_cache: PrefixStats | None = None  # None: prefix caching is off


@dataclass(slots=True)
class _Request:
    handle: RequestHandle
    prompt: list[int]
    params: RequestParams
    sampler: TokenSampler
    text: TextState | None
    stop_ids: frozenset[int]
    slot: int | None = None
    generated: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # prompt + generated, append-only (the PrefixCache holds it)

    @property
    def id(self) -> str:
        return self.handle.request_id


class Engine:
    def __init__(self, runtime: DecoderRuntime, tokenizer: Any = None, config: EngineConfig | None = None):
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.executor = BatchExecutor(runtime)
        self.slots = SlotPool(runtime.batch_size)
        self.eos_token_ids = self.config.eos_token_ids
        if self.eos_token_ids is None:
            self.eos_token_ids = _artifact_eos(runtime.root)
        self.vocab_size = runtime.vocab_size
        self.prefix = PrefixCache(runtime.batch_size, min_tokens=self.config.min_prefix_tokens)
        self.prefix_caching = self._prefix_setting(self.config.prefix_caching, runtime)
        self._lock = threading.Lock()  # guards the inbox, the id registry and `_closed`
        self._work = threading.Condition(self._lock)
        self._step_lock = threading.Lock()  # one step at a time
        self._inbox: list[tuple[str, Any]] = []
        self._known: dict[str, _Request] = {}  # every unfinished request, by id
        self._handles: dict[str, RequestHandle] = {}  # until its final output is delivered
        self._waiting: deque[_Request] = deque()
        self._running: dict[int, _Request] = {}  # slot -> request
        self._ids = itertools.count()
        self._steps = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_artifact(cls, path: str | Path, tokenizer: Any = "auto", config: EngineConfig | None = None, *,
                      trust_remote_code: bool = False) -> Engine:
        """`tokenizer="auto"` loads the tokenizer files exported with the artifact, if there are any.
        `trust_remote_code`: consent to run graphs this machine did not compile (as NeuronModelForCausalLM)."""
        runtime = load_runtime(Artifact.open(path), trust_remote_code=trust_remote_code)
        if tokenizer == "auto":
            tokenizer = _artifact_tokenizer(Path(path))
        return cls(runtime, tokenizer, config)

    @staticmethod
    def _prefix_setting(wanted: bool | None, runtime: DecoderRuntime) -> bool:
        chunks = bool(runtime.config.chunk_buckets)
        if wanted and not chunks:
            raise ValueError(f"EngineConfig.prefix_caching=True needs the artifact's chunked-prefill graphs, and "
                             f"{runtime.root} has none; re-export with --chunk-buckets, or leave prefix_caching unset")
        return chunks if wanted is None else wanted

    # ---- submitting (any thread) -----------------------------------------------------------
    def add_request(self, prompt: Sequence[int] | str, params: RequestParams | None = None, *,
                    request_id: str | None = None, on_output: OutputCallback | None = None) -> RequestHandle:
        """Validate and queue a request. A bad request raises RequestError here and leaves no trace."""
        params = params or RequestParams()
        ids = self._prompt_ids(prompt)
        self._check(ids, params)
        text = None
        if self.tokenizer is not None:
            text = TextState(self.tokenizer, params.stop, params.skip_special_tokens)
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids.update(self.eos_token_ids or ())
        with self._lock:
            if self._closed:
                raise EngineClosedError("the engine was shut down; create a new Engine to submit requests")
            rid = request_id if request_id is not None else f"req-{next(self._ids)}"
            if rid in self._known:
                raise RequestError("request_id", rid, "an id not used by an unfinished request",
                                   "pick a unique id, or omit it to get one generated")
            limit = self.config.max_queued
            if limit is not None and self._queued_locked() >= limit:
                raise QueueFullError("max_queued", limit, f"at most {limit} waiting requests",
                                     "retry when a request finishes, or raise EngineConfig.max_queued")
            handle = RequestHandle(self, rid, ids, on_output)
            req = _Request(handle, ids, params, params.sampler(ids, stop_ids, self.vocab_size), text, frozenset(stop_ids))
            self._known[rid] = req
            self._handles[rid] = handle
            self._inbox.append(("add", req))
            self._work.notify()
        return handle

    def cancel(self, request_id: str) -> bool:
        """Cancel a waiting or running request; its slot is free from the next step. False if unknown/finished."""
        with self._lock:
            if request_id not in self._known:
                return False
            self._inbox.append(("cancel", request_id))
            self._work.notify()
            return True

    def _prompt_ids(self, prompt: Sequence[int] | str) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("prompt", prompt, "token ids (this engine has no tokenizer)",
                                   "pass token ids, or create the engine with a tokenizer")
            return list(self.tokenizer(prompt)["input_ids"])
        return _token_ids(prompt)

    def _check(self, ids: list[int], params: RequestParams) -> None:
        cfg = self.runtime.config
        if not ids:
            raise RequestError("prompt", ids, "at least one token", "send a non-empty prompt")
        limit = self.runtime.max_prompt_length
        if len(ids) > limit:
            what = ("sequence_length - 1, the chunked-prefill graphs' limit" if cfg.chunk_buckets
                    else "the artifact's max_context_length; it has no chunked-prefill graphs")
            raise RequestError("prompt", f"{len(ids)} tokens", f"at most {limit} tokens ({what})",
                               "shorten the prompt, or re-export with a larger --max_context_length / "
                               "--sequence_length (with --chunk-buckets)")
        if len(ids) >= cfg.sequence_length:
            raise RequestError("prompt", f"{len(ids)} tokens", f"fewer than sequence_length={cfg.sequence_length}",
                               "leave room to generate, or re-export with a larger --sequence_length")
        _check_vocabulary(ids, self.vocab_size)
        if params.stop and self.tokenizer is None:
            raise RequestError("stop", params.stop, "stop strings only with a tokenizer",
                               "create the engine with a tokenizer, or use stop_token_ids")
        params.check_for(cfg.on_device_sampling, cfg.max_topk, self.vocab_size)

    # ---- stepping (one thread) -------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self._thread is not None and threading.current_thread() is not self._thread:
            raise RuntimeError("the engine loop thread owns step(); call shutdown() first to step by hand")
        with self._step_lock:
            outputs: list[RequestOutput] = []
            self._apply_inbox(outputs)
            self._admit(outputs)
            self._decode(outputs)
            self._steps += 1
        self._dispatch(outputs)
        return outputs

    @property
    def has_work(self) -> bool:
        with self._lock:
            return bool(self._inbox or self._waiting or self._running)

    def _drive(self, request_id: str) -> None:
        """One step on behalf of a handle with no loop thread; refuse to spin when nothing can progress."""
        if not self.has_work:
            raise RuntimeError(f"request {request_id} is unfinished but the engine has no work: this is a bug")
        self.step()

    def _apply_inbox(self, outputs: list[RequestOutput]) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for kind, item in inbox:
            if kind == "add":
                self._waiting.append(item)
                continue
            req = self._known.get(item)
            if req is None:
                continue
            if req.slot is not None:
                self._finish(req, FinishReason.CANCELLED, outputs)
            else:
                self._waiting.remove(req)
                self._finish(req, FinishReason.CANCELLED, outputs)

    def _admit(self, outputs: list[RequestOutput]) -> None:
        budget = self.config.max_prefills_per_step
        while self._waiting and self.slots.num_free and (budget is None or budget > 0):
            req = self._waiting.popleft()
            plan = self.prefix.plan(req.prompt, self.slots.free, enabled=self.prefix_caching)
            req.slot = self.slots.acquire(plan.slot)
            self._running[req.slot] = req
            req.tokens = list(req.prompt)
            if budget is not None:
                budget -= 1
            try:
                if plan.source is not None:
                    self.executor.copy_kv(plan.source, plan.slot, plan.reuse)
                first = self.executor.prefill(req.slot, req.prompt, req.sampler, start=plan.reuse).token
            except Exception as err:  # a failed prefill fails this request only
                logger.exception("prefill of request %s failed", req.id)
                self.prefix.forget(req.slot)
                self._finish(req, FinishReason.ERROR, outputs, error=f"prefill failed: {err}")
                continue
            self.prefix.record(req.slot, req.tokens, len(req.prompt))
            self._accept(req, first, outputs)

    def _decode(self, outputs: list[RequestOutput]) -> None:
        if not self._running:
            return
        entries = {
            slot: DecodeEntry(req.generated[-1], len(req.prompt) + len(req.generated) - 1, req.sampler)
            for slot, req in self._running.items()
        }
        # A full-batch decode also runs the free rows: those holding a reusable prefix rewrite their own
        # last entry instead of getting token 0 at position 0.
        hold = self.prefix.hold_rows(self.slots.free) if self.prefix_caching else None
        try:
            results = self.executor.decode(entries, hold)
        except Exception as err:  # fail the batch, keep the engine
            logger.exception("decode step failed")
            for slot, req in list(self._running.items()):
                self.prefix.forget(slot)
                self._finish(req, FinishReason.ERROR, outputs, error=f"decode failed: {err}")
            return
        for slot, result in results.items():
            self.prefix.advance(slot, entries[slot].position + 1)
            self._accept(self._running[slot], result.token, outputs)

    def _accept(self, req: _Request, token: int, outputs: list[RequestOutput]) -> None:
        """Record one sampled token and decide whether the request is done."""
        req.generated.append(token)
        req.tokens.append(token)
        text = req.text.add(token) if req.text is not None else ""
        reason = None
        if token in req.stop_ids or (req.text is not None and req.text.stopped_at is not None):
            reason = FinishReason.STOP
        elif len(req.generated) >= req.params.max_tokens:
            reason = FinishReason.LENGTH
        elif len(req.prompt) + len(req.generated) >= self.runtime.config.sequence_length:
            reason = FinishReason.LENGTH  # the KV cache has no row left for the next token
        if reason is None:
            outputs.append(RequestOutput(req.id, (token,), text))
        else:
            self._finish(req, reason, outputs, new=(token,), text=text)

    def _finish(self, req: _Request, reason: FinishReason, outputs: list[RequestOutput], *,
                new: tuple[int, ...] = (), text: str = "", error: str | None = None) -> None:
        if req.slot is not None:
            del self._running[req.slot]
            self.slots.release(req.slot)
            req.slot = None
        if req.text is not None and reason != FinishReason.STOP:
            text += req.text.finish()
        with self._lock:
            self._known.pop(req.id, None)
        outputs.append(RequestOutput(req.id, new, text, reason, error))

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            with self._lock:
                handle = self._handles[out.request_id]
                if out.finished:
                    del self._handles[out.request_id]
            try:
                handle._deliver(out)
            except Exception:  # a broken callback must not take the loop down
                logger.exception("output callback of request %s raised; cancelling it", out.request_id)
                if not out.finished:
                    self.cancel(out.request_id)

    # ---- the loop thread -----------------------------------------------------------------------
    @property
    def loop_running(self) -> bool:
        return self._thread is not None

    def start(self) -> Engine:
        """Start the background loop thread (idempotent)."""
        with self._lock:
            if self._closed:
                raise EngineClosedError("the engine was shut down; create a new Engine")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="neuron-engine-loop", daemon=True)
                self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._inbox or self._waiting or self._running or self._closed):
                    self._work.wait()
                if self._closed and not (self._inbox or self._waiting or self._running):
                    return
            self.step()

    def shutdown(self) -> None:
        """Cancel everything still waiting or running, stop the loop thread, refuse new requests."""
        with self._lock:
            self._closed = True
            self._inbox.extend(("cancel", rid) for rid in list(self._known))
            self._work.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        elif self.has_work:
            self.step()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- convenience and introspection -------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int] | str], params: RequestParams | None = None) -> list[Completion]:
        handles = [self.add_request(p, params) for p in prompts]
        return [h.result() for h in handles]

    def stats(self) -> EngineStats:
        with self._step_lock:
            busy = tuple(self.slots.busy)
            return EngineStats(slots=self.slots.size, free_slots=self.slots.num_free, running=len(self._running),
                               waiting=len(self._waiting) + self._queued_inbox(), steps=self._steps, busy_slots=busy,
                               prefix_cache=replace(self.prefix.stats) if self.prefix_caching else None)

    def _queued_inbox(self) -> int:
        with self._lock:
            return sum(1 for kind, _ in self._inbox if kind == "add")

    def _queued_locked(self) -> int:
        return len(self._waiting) + sum(1 for kind, _ in self._inbox if kind == "add")


_NOT_IDS = "a string, or token ids: a list of ints or a 1-D integer tensor"


def _integer_tensor(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def _token_ids(prompt: Any) -> list[int]:
    """The prompt's ids as ints, refusing anything a cast would silently turn into other tokens."""
    if isinstance(prompt, torch.Tensor):
        if not _integer_tensor(prompt) or prompt.dim() != 1:
            raise RequestError("prompt", f"a {prompt.dtype} tensor of shape {tuple(prompt.shape)}", _NOT_IDS,
                               "pass one prompt's input_ids from the tokenizer")
        return prompt.tolist()
    try:
        items = list(prompt)
    except TypeError:
        raise RequestError("prompt", prompt, _NOT_IDS, "pass the tokenizer's input_ids") from None
    for i, t in enumerate(items):
        if isinstance(t, torch.Tensor) and t.dim() == 0 and _integer_tensor(t):
            continue  # list(tensor) gives 0-d integer tensors
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise RequestError("prompt", f"{t!r} at position {i}", _NOT_IDS, "pass the tokenizer's input_ids")
    return [int(t) for t in items]


def _check_vocabulary(ids: list[int], vocab_size: int | None) -> None:
    # vocab_size is None only for artifacts whose graphs return tokens and record no vocabulary size.
    if min(ids) >= 0 and (vocab_size is None or max(ids) < vocab_size):
        return
    i, t = next((i, t) for i, t in enumerate(ids) if t < 0 or (vocab_size is not None and t >= vocab_size))
    allowed = "token ids >= 0" if vocab_size is None else f"token ids in [0, {vocab_size})"
    raise RequestError("prompt", f"token {t} at position {i}", allowed,
                       "check that the tokenizer belongs to this model")


def _artifact_eos(root: Path) -> tuple[int, ...]:
    for name in ("generation_config.json", "config.json"):
        path = root / name
        if path.is_file():
            try:
                data = json.loads(path.read_bytes().decode("utf-8"))
                eos = data.get("eos_token_id") if isinstance(data, dict) else None
                if eos is not None:
                    return tuple(int(e) for e in eos) if isinstance(eos, list) else (int(eos),)
            except (ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                raise ValueError(f"{path}: cannot read eos_token_id ({str(err)[:120]}); repair the file, delete it, "
                                 "or pass EngineConfig(eos_token_ids=...)") from None
    return ()


def _artifact_tokenizer(root: Path) -> Any:
    if not any((root / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(root)
