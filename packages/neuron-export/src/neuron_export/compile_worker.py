"""Compile graphs in worker processes: several at once, and while the checkpoint still loads.

A graph compile is one core's work for most of its time (torch.export, Inductor's Python codegen,
then g++): ~40 CPU-seconds per SmolLM2-135M graph on these machines, a compile-wrapper opt level of
O0 instead of O1 saves nothing (measured). An export compiles several graphs (prompt buckets, KV
buckets, sub-batch graphs) and loads a checkpoint (GGUF dequantization: ~14 s), none of which needs
the others, so on N cores they run side by side.

Backends whose graph files carry no weights (`Backend.compiles_from_shapes`: torch-aot, whose
AOTInductor packages bind their constants at load) compile from a skeleton of the model built in the
worker: the checkpoint never crosses a process boundary, and no weight value reaches the file.

Workers are plain `python -m neuron_export.compile_worker REQUEST RESULT` processes rather than
multiprocessing's: spawn re-imports the caller's `__main__`, which re-runs a user's script that calls
`export()` without a main guard. The request and the result are pickles in a private temporary
directory this export created; nothing else is read.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuron_export.errors import ExportError

_OUTPUT_TAIL = 4000  # characters of a failed worker's output quoted in the error


@dataclass(kw_only=True, slots=True)
class CompileRequest:
    """One graph: which model (config and shapes), which graph of it, how to compile it, where to write it."""

    hf_config: Any
    shapes: Any  # StaticShapes
    name: str
    role: str
    bucket: int | None
    rows: int | None
    kernels: Any  # KernelChoice
    flags: dict[str, Any]
    static: dict[str, Any]
    backend: str
    target: str
    output: str = ""


def compile_graph(model, request: CompileRequest):
    """Compile `request`'s graph of `model` (with weights or a skeleton of the same shapes); returns CompiledGraph.
    The one place a graph job is set up, in-process or in a worker."""
    from neuron_export.backends import GraphJob, get_backend
    from neuron_export.models.parallel import tracing_world

    if request.role == "encoder":
        from neuron_export.encoder_export import compile_encoder_graph

        return compile_encoder_graph(model, request)
    role, bucket, rows = request.role, request.bucket, request.rows
    model.role = role
    model.decode_rows = rows
    model.kv_length = bucket if role == "token_generation" else None
    model.reset_state()
    job = GraphJob(name=request.name, role=role, bucket=bucket, module=model,
                   example_inputs=model.example_inputs(role, None if role == "token_generation" else bucket, rows),
                   input_names=model.input_names(role, rows), flags=dict(request.flags), static=dict(request.static),
                   kernels=request.kernels)
    try:
        with tracing_world(request.shapes.tensor_parallel_size):
            return get_backend(request.backend).compile(job, Path(request.output), request.target)
    finally:
        model.decode_rows = model.kv_length = None
        model.reset_state()


def skeleton(hf_config, shapes):
    """The model a graph is traced from, without its weights: every graph of an export has the same constants'
    names, shapes and dtypes whatever their values (the rope tables and the rank's token map are filled in)."""
    from neuron_export.models.spec import EncoderShapes

    if isinstance(shapes, EncoderShapes):
        from neuron_export.encoder_export import encoder_skeleton

        return encoder_skeleton(hf_config, shapes)
    from neuron_export.models.build import build_decoder

    _, model = build_decoder(hf_config, shapes)
    for name, value in model.rank_buffers(0).items():
        model.get_buffer(name).copy_(value)
    return model


def run_jobs(one: Callable[..., Any], jobs: list[tuple], pool: WorkerPool | None) -> list[Any]:
    """`one(*job)` for every job, results in job order: one after another here, or each in its own thread waiting
    for a worker of `pool`; the first failure stops the other workers (their graphs are of no use then)."""
    if pool is None:
        return [one(*job) for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(jobs), thread_name_prefix="neuron-export-graph") as threads:
        futures = [threads.submit(one, *job) for job in jobs]
        try:
            return [f.result() for f in futures]
        except BaseException:
            pool.stop()
            raise


class WorkerPool:
    """Runs `CompileRequest`s in at most `size` worker processes at once; `stop()` kills the running ones."""

    def __init__(self, size: int):
        self.slots = threading.BoundedSemaphore(size)
        self.tmp = Path(tempfile.mkdtemp(prefix="neuron-export-workers-"))
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self, request: CompileRequest, started: Callable[[], None] = lambda: None
            ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """Compile in a worker process (`started()` once one is free); returns the graph's (outputs, derived)."""
        with self.slots:
            if self.stopped.is_set():
                raise ExportError(f"compiling {request.name}: the export stopped")
            started()
            work = Path(tempfile.mkdtemp(prefix=f"{request.name}-", dir=self.tmp))
            (work / "request.pkl").write_bytes(pickle.dumps(request))
            with open(work / "output.log", "wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "neuron_export.compile_worker", str(work / "request.pkl"),
                                         str(work / "result.pkl")], stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT)
                with self._lock:
                    self._procs.add(proc)
                try:
                    code = proc.wait()
                finally:
                    with self._lock:
                        self._procs.discard(proc)
            if self.stopped.is_set():
                raise ExportError(f"compiling {request.name}: the export stopped")
            result_file = work / "result.pkl"
            if code != 0 or not result_file.is_file():
                tail = (work / "output.log").read_text(errors="replace")[-_OUTPUT_TAIL:]
                raise ExportError(f"compiling graph {request.name} failed in its worker process (exit code {code}):\n{tail}")
            kind, payload = pickle.loads(result_file.read_bytes())
            if kind == "error":
                raise ExportError(f"compiling graph {request.name} failed: {payload}")
            return payload

    def stop(self) -> None:
        self.stopped.set()
        with self._lock:
            for proc in self._procs:
                proc.kill()

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


def main(request_file: str, result_file: str) -> int:
    request: CompileRequest = pickle.loads(Path(request_file).read_bytes())
    try:
        compiled = compile_graph(skeleton(request.hf_config, request.shapes), request)
        # Plain data only: under `python -m` this module is __main__, whose classes the parent cannot unpickle.
        result = ("ok", (compiled.outputs, compiled.derived))
    except Exception as err:  # reported to the parent with the worker's traceback
        result = ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()[-_OUTPUT_TAIL:]}")
    Path(result_file).write_bytes(pickle.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
