"""MultiRankRuntime: a tensor-parallel artifact run by N rank processes this runtime starts and owns.

It has DecoderRuntime's interface (prefill, prefill_chunk, copy_kv, decode, decode_slots, rows_for,
...), so generate, the Engine and the vLLM worker run on it unchanged: to them it is one runtime (vLLM
sees one worker), as NxDI presents the NeuronCores of a model. Each call goes to every rank (parallel/rank.py); the ranks
run their graphs, whose collectives synchronise them, and rank 0 returns the output.

The processes are started by torch.multiprocessing (spawn); `_Ranks.close` asks them to exit, then
terminates and reaps what is left. A rank that dies is noticed while its call is awaited (its process sentinel and its
pipe are watched together), and the caller gets RankFailedError naming the rank and the signal; the
other ranks are stopped, the rendezvous directory removed, and the runtime refuses further calls.
Like every spawn-based launcher (vLLM, DataLoader workers), a script that loads such an artifact must
keep its top-level code under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from neuron_cache import Artifact
from neuron_infer.parallel.rank import from_wire, rank_main, to_wire

# Loading a rank (import torch, open the graphs, bind the weights) takes seconds; compile-cache misses do
# not happen here. A rank silent for this long at start-up is reported, not waited on forever.
START_TIMEOUT_S = 600.0
CLOSE_TIMEOUT_S = 10.0


class RankFailedError(RuntimeError):
    """A rank process died or failed; the runtime has stopped its other ranks and cannot be used again."""


def _threads_per_rank(tp: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // tp)


def _describe_exit(code: int | None) -> str:
    import signal

    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class _Ranks:
    """The rank processes, their pipes and their rendezvous directory: everything to release on close."""

    def __init__(self, root: Path, tp: int, trust_remote_code: bool, origin: str | None):
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.tmp = tempfile.mkdtemp(prefix="neuron-infer-ranks-")
        pipes = [ctx.Pipe() for _ in range(tp)]
        self.conns: list[Connection] = [driver for driver, _ in pipes]
        rank_ends = [rank for _, rank in pipes]
        try:
            self.context = mp.start_processes(
                rank_main, args=(rank_ends, str(root), os.path.join(self.tmp, "store"), tp, _threads_per_rank(tp),
                                 trust_remote_code, origin),
                nprocs=tp, join=False, start_method="spawn",
            )
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        finally:
            for end in rank_ends:  # the ranks hold these now; a rank's death must read as EOF here
                end.close()
        self.pids = [p.pid for p in self.context.processes]

    def sentinels(self) -> dict[int, int]:
        return {p.sentinel: rank for rank, p in enumerate(self.context.processes)}

    def exit_codes(self) -> list[int | None]:
        return [p.exitcode for p in self.context.processes]

    def close(self, graceful: bool) -> None:
        """Stop every rank (asking first when `graceful`), reap them and remove the rendezvous directory."""
        if graceful:
            for conn in self.conns:
                try:
                    conn.send(("close",))
                except OSError:
                    pass
        procs = self.context.processes
        for p in procs:
            p.join(CLOSE_TIMEOUT_S if graceful else 0.5)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(CLOSE_TIMEOUT_S)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self.conns:
            conn.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class MultiRankRuntime:
    def __init__(self, artifact: Artifact, *, trust_remote_code: bool = False, origin: str | None = None):
        from neuron_infer.runtime import check_compatible, check_trust

        self.artifact, self.root, self.config = artifact, artifact.root, artifact.config
        self.tp = self.config.tensor_parallel_size
        check_compatible(self.config, self.root, multi_rank=True)
        # Refuse untrusted graphs here, before any process starts. Nothing runs in this process, so no snapshot
        # copies: each rank checks again, and loads from its own copies, what it runs.
        self.trust = check_trust(artifact, trust_remote_code, origin)
        self._lock = threading.Lock()
        self._failure: str | None = None
        self._ranks = _Ranks(self.root, self.tp, trust_remote_code, origin)
        self._finalizer = weakref.finalize(self, self._ranks.close, True)
        try:
            ready = self._gather("load", timeout=START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        self._vocab_size = ready[0]["vocab_size"]

    # ---- DecoderRuntime's interface ----------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def vocab_size(self) -> int | None:
        return self._vocab_size

    @property
    def pids(self) -> list[int]:
        """The rank processes' ids (rank order)."""
        return list(self._ranks.pids)

    def rows_for(self, n: int) -> int | None:
        return self.config.rows_for(n)

    def prefill(self, prompt, slot, sampling=None, rand=None):
        return self._call("prefill", prompt, slot, sampling, rand)

    def decode(self, tokens, positions, sampling=None, rand=None):
        return self._call("decode", tokens, positions, sampling, rand)

    def decode_slots(self, slots, tokens, positions, sampling=None, rand=None):
        return self._call("decode_slots", list(slots), tokens, positions, sampling, rand)

    def prefill_chunk(self, tokens, slot, start):
        from neuron_infer.runtime import check_chunk

        check_chunk(self.config, int(tokens.numel()), int(slot), int(start))  # here, before any rank runs
        return self._call("prefill_chunk", tokens, int(slot), int(start))

    def copy_kv(self, src_slot, dst_slot, length) -> None:
        """Every rank copies its own share of the KV heads."""
        from neuron_infer.runtime import check_copy

        check_copy(self.config, int(src_slot), int(dst_slot), int(length))
        self._call("copy_kv", int(src_slot), int(dst_slot), int(length))

    @property
    def max_prompt_length(self) -> int:
        return self.config.max_prompt_length

    def warmup(self) -> None:
        self._call("warmup")

    def close(self) -> None:
        """Stop the rank processes (also done when the runtime is garbage-collected or the program exits)."""
        with self._lock:
            if self._failure is None:
                self._failure = "the runtime was closed"
            self._finalizer()

    # ---- the ranks ---------------------------------------------------------------------------
    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            if self._failure is not None:
                raise RankFailedError(f"{self.root}: this tensor-parallel runtime cannot run {method}: {self._failure}. "
                                      "Load the model again.")
            wire = [to_wire(a) for a in args]
            for rank, conn in enumerate(self._ranks.conns):
                try:
                    conn.send(("call", method, wire))
                except OSError:
                    self._fail(method, rank)
            return from_wire(self._gather(method)[0])

    def _gather(self, method: str, timeout: float | None = None) -> list[Any]:
        """Every rank's reply to the current call; rank 0's carries the output. Raises the ranks' error (the
        same on every rank: they check the same inputs) or RankFailedError when a rank dies."""
        conns = self._ranks.conns
        sentinels = self._ranks.sentinels()
        pending = dict(enumerate(conns))
        replies: list[Any] = [None] * len(conns)
        errors: list[tuple[BaseException, str]] = []
        while pending:
            ready = wait([*pending.values(), *sentinels], timeout)
            if not ready:
                self._fail(method, min(pending), timed_out=timeout)
            for obj in ready:
                if obj in sentinels:  # a process ended: whatever it had sent is moot
                    self._fail(method, sentinels[obj])
                rank = next(r for r, c in pending.items() if c is obj)
                try:
                    reply = obj.recv()
                except (EOFError, OSError):
                    self._fail(method, rank)
                del pending[rank]
                if reply[0] == "error":
                    errors.append((reply[1], reply[2]))
                else:
                    replies[rank] = reply[1]
        if errors:
            # The same error on every rank (they check the same inputs) is the caller's. Anything else means the
            # ranks parted ways: one failed before a collective its peers entered (they fail in turn when gloo
            # times out), and their collectives no longer pair up. Stop them all.
            if len(errors) != len(conns) or len({(type(e), str(e)) for e, _ in errors}) > 1:
                self._fail(method, None, detail=errors[0][1])
            raise errors[0][0]
        return replies

    def _fail(self, method: str, rank: int | None, timed_out: float | None = None, detail: str = "") -> None:
        self._ranks.close(graceful=False)
        codes = self._ranks.exit_codes()
        if timed_out is not None:
            what = f"rank {rank} did not answer within {timed_out:.0f} s"
        elif rank is None:
            what = "the ranks failed differently"
        else:
            what = f"rank {rank} (pid {self._ranks.pids[rank]}) {_describe_exit(codes[rank])}"
        self._failure = f"{what} during {method}"
        self._finalizer.detach()
        raise RankFailedError(
            f"{self.root}: tensor-parallel {what} during {method}; its {self.tp - 1} other rank(s) were stopped. "
            "Load the model again to continue." + (f"\n{detail}" if detail else "")
        )
