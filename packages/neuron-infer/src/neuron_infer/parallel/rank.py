"""What one rank process runs: join the group, load its share of the artifact, then serve calls.

The driver (parallel/ranks.py) sends every rank the same call; each runs it on its own
`DecoderRuntime` (its weights shard, the shared graphs, collectives inside them), and rank 0, whose
outputs are complete after the graphs' last all_reduce, sends them back. Tensors cross the pipe as numpy
arrays: torch's multiprocessing pickler would move them through shared memory, which is one more
thing to leak when a process dies.
"""

from __future__ import annotations

import traceback
from multiprocessing.connection import Connection
from typing import Any

CALLS = ("prefill", "prefill_chunk", "copy_kv", "decode", "decode_slots", "warmup")


def to_wire(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return ("tensor", value.detach().cpu().contiguous().numpy())
    return value


def from_wire(value: Any) -> Any:
    import torch

    if isinstance(value, tuple) and len(value) == 2 and value[0] == "tensor":
        return torch.from_numpy(value[1])
    return value


def _error(err: BaseException) -> BaseException:
    """The exception itself when it crosses a pipe intact (a ValueError stays a ValueError for the caller)."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def rank_main(rank: int, conns: list[Connection], root: str, store_file: str, tp: int, threads: int,
              trust_remote_code: bool, origin: str | None) -> None:
    """Entry point of rank `rank` (torch.multiprocessing passes the index first)."""
    import signal

    # Ctrl-C reaches the whole process group; the driver decides what stops, and closes the ranks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a rank is (a stuck collective, say)
    conn = conns[rank]
    for i, other in enumerate(conns):  # keep only this rank's end: EOF then means the driver is gone
        if i != rank:
            other.close()
    try:
        import torch

        torch.set_num_threads(threads)
        from neuron_cache import Artifact
        from neuron_infer.parallel.world import join_rank_group
        from neuron_infer.runtime import DecoderRuntime

        artifact = Artifact.open(root)
        join_rank_group(store_file, rank, tp, artifact.config.target.device)
        runtime = DecoderRuntime(artifact, trust_remote_code=trust_remote_code, origin=origin)
        conn.send(("ready", {"vocab_size": runtime.vocab_size}))
    except BaseException as err:  # everything goes back to the driver, which raises it
        conn.send(("error", _error(err), traceback.format_exc()))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the driver exited: so do we
            return
        if message[0] == "close":
            conn.send(("closed", None))
            return
        _, method, args = message
        try:
            if method not in CALLS:
                raise ValueError(f"unknown runtime call {method!r}")
            out = getattr(runtime, method)(*[from_wire(a) for a in args])
            conn.send(("ok", to_wire(out) if rank == 0 else None))
        except BaseException as err:
            conn.send(("error", _error(err), traceback.format_exc()))
