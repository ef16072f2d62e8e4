"""`neuron-vllm serve` on a tensor-parallel artifact: vLLM runs one worker, whose runtime starts and owns the
artifact's two rank processes. Checked with the openai client against transformers; then a rank is killed and
the server must answer with an error and exit (never hang), leaving no rank process behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import openai
import pytest
from support.procs import live_pids, proc_stat
from support.tiny import transformers_greedy
from vllm_testlib import serve

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.distributed]

PROMPTS = [[1, 400, 1203, 77], [1, 9, 18000, 3, 5, 2048, 11, 310, 40000, 12]]


def rank_pids(server_pid: int) -> list[int]:
    """The rank processes: torch.multiprocessing children of a process (vLLM's engine core) that is itself a
    child of the server, in the server's session."""
    procs = {pid: st for pid, st in live_pids().items() if st[1] == server_pid}
    engine = {pid for pid, (ppid, _) in procs.items() if ppid == server_pid}
    return sorted(pid for pid, (ppid, _) in procs.items()
                  if ppid in engine and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes())


def test_serve_tp2_artifact_then_survive_a_dead_rank(tiny_tp2_artifact, tiny_reference, tmp_path):
    with serve(tiny_tp2_artifact, tmp_path) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=120, max_retries=0)
        for prompt in PROMPTS:
            out = client.completions.create(model=server.model, prompt=prompt, max_tokens=12, temperature=0.0,
                                            extra_body={"ignore_eos": True, "return_token_ids": True})
            assert out.choices[0].token_ids == transformers_greedy(tiny_reference, prompt, 12)
        ranks = rank_pids(server.proc.pid)
        assert len(ranks) == 2, ranks

        os.kill(ranks[1], signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(openai.APIError):
            client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=12, temperature=0.0)
        answered = time.monotonic() - start
        assert answered < 60, f"the error took {answered:.0f} s"
        # vLLM's engine core dies with the step that raised; the server then exits on its own.
        try:
            server.proc.wait(timeout=90)
        except Exception:
            pytest.fail(f"the server neither recovered nor exited:\n{server.log.read_text()[-4000:]}")
        log = server.log.read_text()
        assert "tensor-parallel rank 1" in log and "SIGKILL" in log, log[-4000:]
    for pid in ranks:
        assert proc_stat(pid) is None, f"rank process {pid} outlived the server"
