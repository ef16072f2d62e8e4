"""The compile-backend interface: trace one graph per role and bucket, compile it, write a file.

A backend never sees weights as part of the graph: every parameter and buffer of the traced module
is a constant bound at load time, so one compiled graph serves any checkpoint of the same
architecture and shapes. That is what lets a Neuron backend (per-bucket NEFFs, weights sharded per
rank at load) sit behind this same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True, kw_only=True, slots=True)
class KernelChoice:
    """Backend-specific kernels an export's graphs are compiled with, chosen by the backend
    (`Backend.choose_kernels`); the model never sees them. Part of every graph's compile-cache key: a graph
    compiled with packing must never be served to an export without it."""

    prepacked_decode: bool = False  # decode GEMVs on weights pre-packed at load (backends/cpu_kernels.py)
    prefill_upcast: bool = False  # prefill GEMMs in float32 from 16-bit weights (backends/cpu_kernels.py)
    gemv16: bool = False  # 16-bit decode GEMVs on neuron-infer's neuron::linear_16bit (backends/cpu_kernels.py)


@dataclass(kw_only=True, slots=True)
class GraphJob:
    """One graph to compile: a module whose `forward` is the graph, and its example inputs."""

    name: str
    role: str
    bucket: int | None
    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    # Names of the graph's outputs, in order; None: "tokens" for an int64 output, else "logits" (the decoders').
    output_names: list[str] | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    # The config fields this graph is compiled for (batch_size, sequence_length, torch_dtype, rows, ...):
    # written into the graph's signature, which the runtime checks neuron_config.json against.
    static: dict[str, Any] = field(default_factory=dict)
    kernels: KernelChoice = field(default_factory=KernelChoice)


@dataclass(kw_only=True, slots=True)
class CompiledGraph:
    """What a backend returns: the file it wrote and the static signature it found."""

    file: Path
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    mutated_state: list[str]
    # Constants the graph binds that the runtime computes at load (`weights.derived`): name -> {op, source, args}.
    derived: dict[str, dict[str, Any]] = field(default_factory=dict)


class Backend(ABC):
    name: str
    file_extension: str = ".pt2"
    # True when a graph file holds no weights (they are bound at load), so a graph compiles from the model's shapes
    # alone: export then compiles graphs in worker processes, several at once and while the checkpoint loads
    # (compile_worker.py). A backend whose files carry the weights compiles from the loaded model, in-process.
    compiles_from_shapes: bool = False

    @property
    @abstractmethod
    def default_target(self) -> str: ...

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """compiler_version and torch_version: part of every cache key and of the artifact."""

    def default_flags(self, target: str) -> dict[str, Any]:
        return {}

    def choose_kernels(self, target: str, dtype: str, *, prepack_weights: bool | None,
                       prefill_upcast: bool | None, gemv16: bool | None = None) -> KernelChoice:
        """The kernels this backend compiles an export's graphs with, from the user's options (None: the
        backend decides). By default none; an explicit request for one is refused rather than ignored."""
        from neuron_export.errors import ExportError

        for flag, asked in (("--prepack-weights", prepack_weights), ("--prefill-upcast", prefill_upcast),
                            ("--gemv16", gemv16)):
            if asked:
                raise ExportError(f"{flag}: backend {self.name} (target {target}) compiles no CPU kernels; it is a "
                                  "choice of backend torch-aot with target cpu. Drop the flag or use --backend torch-aot")
        return KernelChoice()

    def derived_constants(self, job: GraphJob, target: str) -> dict[str, dict[str, Any]]:
        """What `compile` would report in `CompiledGraph.derived`, without compiling (for cached graphs)."""
        return {}

    @abstractmethod
    def compile(self, job: GraphJob, out_file: Path, target: str) -> CompiledGraph:
        """Trace `job.module` on `job.example_inputs`, compile it for `target`, write `out_file`."""


def tensor_spec(name: str, t: Any) -> dict[str, Any]:
    return {"name": name, "shape": [int(d) for d in t.shape], "dtype": str(t.dtype).removeprefix("torch.")}
