"""Helpers for the vLLM tests: the environment, vLLM in a child process, a server by process group.

vLLM always runs in a child process here: its engine core is spawned (so scripts need a
`__main__` guard) and a crashed or hung engine must never take pytest with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "workers"
SMOLLM2_SHAPES = dict(batch_size=8, sequence_length=256, max_context_length=128, context_buckets=[64, 128],
                      chunk_buckets=[64], torch_dtype="float32", backend="torch-aot")


def vllm_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(VLLM_HOST_IP="127.0.0.1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1",
               VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("VLLM_PLUGINS", None)  # the default: the installed plugin decides per model
    env.update(extra)
    return env


def run_worker(script: str, args: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run tests/vllm/workers/<script> in its own process group; kill the group on timeout."""
    proc = subprocess.Popen([sys.executable, str(WORKERS / script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env or vllm_env(), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        out, _ = proc.communicate()
        raise AssertionError(f"{script} ran over {timeout} s; output tail:\n{out[-4000:]}") from None
    finally:
        stop_group(proc)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def run_offline(spec: dict, tmp: Path, timeout: float = 300, env: dict[str, str] | None = None) -> dict:
    spec_path, out_path = tmp / "spec.json", tmp / "out.json"
    spec_path.write_text(json.dumps(spec))
    run_worker("offline_generate.py", [str(spec_path), str(out_path)], timeout, env)
    return json.loads(out_path.read_text())


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL what is left: nothing may outlive a test."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the engine core may linger after the API server exits
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path
    status_file: Path
    model: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict:
        return json.loads(self.status_file.read_text())

    def wait_idle(self, timeout: float = 30) -> dict:
        """Poll the worker's slot status until no slot is busy; return the last status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if not status["busy"] or time.monotonic() > deadline:
                return status
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextlib.contextmanager
def serve(artifact: Path, tmp: Path, *extra: str, timeout: float = 240) -> Iterator[Server]:
    """`neuron-vllm serve ARTIFACT` on a free loopback port, stopped by process group on exit."""
    port, status_file = free_port(), tmp / "slots.json"
    cli = Path(sys.executable).parent / "neuron-vllm"
    command = [str(cli), "serve", str(artifact), "--port", str(port), *extra]
    with _started(command, vllm_env(NEURON_VLLM_STATUS_FILE=str(status_file)), port, tmp, timeout) as proc:
        yield Server(proc, port, tmp / "server.log", status_file, str(artifact))


@contextlib.contextmanager
def serve_vllm_cpu(model: Path, tmp: Path, *extra: str, timeout: float = 240) -> Iterator[Server]:
    """vLLM's own CPU backend (VLLM_PLUGINS empty) serving a transformers checkpoint: the reference server."""
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--host", "127.0.0.1", "--port", str(port), *extra]
    with _started(command, vllm_env(VLLM_PLUGINS=""), port, tmp, timeout) as proc:
        yield Server(proc, port, tmp / "server.log", tmp / "no-status.json", str(model))


@contextlib.contextmanager
def _started(command: list[str], env: dict[str, str], port: int, tmp: Path, timeout: float
             ) -> Iterator[subprocess.Popen]:
    """Start a server in its own process group, wait for /health, stop the group on exit."""
    log = tmp / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready in {timeout} s:\n{log.read_text()[-6000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        yield proc
    finally:
        stop_group(proc)
