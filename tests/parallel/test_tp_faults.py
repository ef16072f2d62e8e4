"""A rank that dies mid-request: the caller gets a clear error promptly, and nothing is left behind (no rank
process, no child of ours, no rendezvous directory, no shared memory); the runtime then refuses to run."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from support.procs import children_of
from tp_testlib import export_tp

from neuron_infer import NeuronModelForCausalLM
from neuron_infer.parallel import RankFailedError


@pytest.fixture(scope="module")
def tp2_artifact(tp_checkpoints, tmp_path_factory) -> Path:
    return export_tp(tp_checkpoints["llama"][0], tmp_path_factory.mktemp("faults") / "tp2", tp=2)


def rank_dirs() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob("neuron-infer-ranks-*")}


def shm() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").is_dir() else set()


class KillRankAfter:
    """A streamer that SIGKILLs one rank once `after` tokens have come out: the next step runs without it."""

    def __init__(self, pid: int, after: int):
        self.pid, self.after, self.seen, self.killed_at = pid, after, 0, None

    def put(self, value: torch.Tensor) -> None:
        self.seen += 1
        if self.seen == self.after + 1:  # (the first put is the prompt)
            os.kill(self.pid, signal.SIGKILL)
            self.killed_at = time.monotonic()

    def end(self) -> None:
        pass


@pytest.mark.parametrize("victim", [1, 0])
def test_killed_rank_is_a_clear_error_and_leaves_nothing(tp2_artifact, victim):
    before_children, before_dirs, before_shm = set(children_of(os.getpid())), rank_dirs(), shm()
    model = NeuronModelForCausalLM.from_pretrained(tp2_artifact)
    pids = model.runtime.pids
    assert set(children_of(os.getpid())) - before_children >= set(pids)
    streamer = KillRankAfter(pids[victim], after=3)
    with pytest.raises(RankFailedError) as caught:
        model.generate(torch.tensor([[5, 9, 33, 7]]), max_new_tokens=40, do_sample=False, streamer=streamer)
    waited = time.monotonic() - streamer.killed_at
    message = str(caught.value)
    assert f"rank {victim} (pid {pids[victim]}) was killed by SIGKILL" in message, message
    assert "Load the model again" in message
    assert waited < 30, f"the failure took {waited:.1f} s to surface"
    for pid in pids:  # reaped, not zombies
        assert not Path(f"/proc/{pid}").exists(), f"rank process {pid} outlived the failure"
    assert set(children_of(os.getpid())) <= before_children
    assert rank_dirs() == before_dirs and shm() <= before_shm
    with pytest.raises(RankFailedError, match=r"cannot run decode.*Load the model again"):
        model.runtime.decode(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_close_stops_every_rank(tp2_artifact):
    model = NeuronModelForCausalLM.from_pretrained(tp2_artifact)
    pids = model.runtime.pids
    assert model.generate(torch.tensor([[5, 9]]), max_new_tokens=2).shape == (1, 4)
    model.runtime.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    with pytest.raises(RankFailedError, match="closed"):
        model.generate(torch.tensor([[5, 9]]), max_new_tokens=2)


def test_bad_input_is_the_callers_error_and_the_ranks_live_on(tp2_artifact):
    """A ValueError raised on every rank (token id outside the vocabulary) reaches the caller as that ValueError;
    the ranks stay up and the next call works."""
    model = NeuronModelForCausalLM.from_pretrained(tp2_artifact)
    try:
        with pytest.raises(ValueError, match="outside this artifact's vocabulary"):
            model.runtime.prefill(torch.tensor([5, 100000]), 0)
        assert model.generate(torch.tensor([[5, 9]]), max_new_tokens=2).shape == (1, 4)
    finally:
        model.runtime.close()


class _PipeRanks:
    """Two ranks reduced to their pipes: the test writes their replies."""

    def __init__(self):
        from multiprocessing import Pipe

        pairs = [Pipe() for _ in range(2)]
        self.conns, self.rank_ends, self.pids, self.closed = [a for a, _ in pairs], [b for _, b in pairs], [1, 2], False

    def sentinels(self) -> dict:
        return {}

    def exit_codes(self) -> list:
        return [None, None]

    def close(self, graceful: bool) -> None:
        self.closed = True


def _runtime_over(ranks: _PipeRanks):
    import weakref

    from neuron_infer.parallel import MultiRankRuntime

    runtime = MultiRankRuntime.__new__(MultiRankRuntime)
    runtime.root, runtime.tp, runtime._ranks = "artifact", 2, ranks
    runtime._finalizer = weakref.finalize(runtime, lambda: None)
    return runtime


def test_ranks_that_fail_differently_are_stopped_not_trusted_again():
    """One rank refused the call while its peer ran into a collective and failed when gloo gave up: their
    collectives no longer pair, so the runtime stops them instead of handing the caller the first error."""
    ranks = _PipeRanks()
    ranks.rank_ends[0].send(("error", ValueError("slot 9 is outside the compiled batch"), "tb0"))
    ranks.rank_ends[1].send(("error", RuntimeError("gloo: Timed out waiting for peer"), "tb1"))
    with pytest.raises(RankFailedError, match="the ranks failed differently during decode"):
        _runtime_over(ranks)._gather("decode")
    assert ranks.closed

    same = _PipeRanks()  # the same refusal on every rank is the caller's error, and the ranks stay up
    for end in same.rank_ends:
        end.send(("error", ValueError("slot 9 is outside the compiled batch"), "tb"))
    with pytest.raises(ValueError, match="slot 9"):
        _runtime_over(same)._gather("decode")
    assert not same.closed
