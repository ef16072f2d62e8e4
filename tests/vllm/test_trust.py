"""Serving follows loading's trust rule (issue 10): graphs this machine did not compile run only with
vLLM's --trust-remote-code, checked by `neuron-vllm serve` before vLLM starts and again by the worker
(which also serves a plain `python -m vllm.entrypoints.openai.api_server --model ARTIFACT`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from neuron_cache.trust import UntrustedGraphsError

CLI = Path(sys.executable).parent / "neuron-vllm"


def serve_dry_run(artifact: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "serve", str(artifact), "--dry-run", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_serve_refuses_graphs_compiled_elsewhere_unless_trusted(tiny_artifact, tmp_path):
    # Another XDG_CACHE_HOME is another machine's ledger: it never saw these graphs.
    elsewhere = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "other-machine")}
    refused = serve_dry_run(tiny_artifact, env=elsewhere)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "was not compiled on this machine" in refused.stderr and "--trust-remote-code" in refused.stderr
    assert "vllm.entrypoints" not in refused.stderr, "no server command may be printed for a refused artifact"

    for args in (["--trust-remote-code"], ["--", "--trust-remote-code"]):
        ok = serve_dry_run(tiny_artifact, *args, env=elsewhere)
        assert ok.returncode == 0, ok.stderr[-2000:]
        command = ok.stderr.strip().splitlines()[-1]
        assert command.count("--trust-remote-code") == 1, command

    here = serve_dry_run(tiny_artifact, env=dict(os.environ))
    assert here.returncode == 0 and "--trust-remote-code" not in here.stderr, here.stderr[-2000:]


@pytest.mark.parametrize("content", [b'{"schema_version": 1,', b"\xff\xfe", b"[" * 100_000])
def test_serve_names_a_broken_config_in_one_line(tmp_path, content):
    root = tmp_path / "artifact"
    root.mkdir()
    (root / "neuron_config.json").write_bytes(content)
    out = serve_dry_run(root, env=dict(os.environ))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"{root}/neuron_config.json" in out.stderr and "Fix: repair the file" in out.stderr


@pytest.mark.vllm
def test_the_worker_reads_vllms_trust_remote_code(tiny_artifact, tmp_path, monkeypatch):
    from neuron_cache import trust
    from neuron_vllm.worker import NeuronWorker

    monkeypatch.setattr(trust, "trust_dir", lambda: tmp_path / "empty-ledger")
    worker = NeuronWorker.__new__(NeuronWorker)  # only load_model is exercised: it reads model_config, and the
    # settings vLLM's sampler is built from (HostSampling.from_config)

    def configure(trust_remote_code: bool) -> None:
        worker.model_config = SimpleNamespace(model=str(tiny_artifact), trust_remote_code=trust_remote_code,
                                              max_model_len=64, logprobs_mode="raw_logprobs", logits_processors=None,
                                              get_vocab_size=lambda: 49152)
        worker.cache_config = SimpleNamespace(enable_prefix_caching=True, block_size=16)
        worker.vllm_config = SimpleNamespace(model_config=worker.model_config, speculative_config=None,
                                             reasoning_config=None, scheduler_config=SimpleNamespace(max_num_seqs=2),
                                             cache_config=worker.cache_config)

    configure(trust_remote_code=False)
    with pytest.raises(UntrustedGraphsError, match="trust_remote_code=True"):
        worker.load_model()
    assert worker.runner is None
    configure(trust_remote_code=True)
    with pytest.warns(UserWarning, match="running graphs not compiled on this machine"):
        worker.load_model()
    assert worker.runner is not None
