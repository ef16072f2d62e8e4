"""The Neuron backend: torch-neuronx / neuronx-distributed behind the same interface.

Not verifiable on these machines: the Neuron SDK is not installable here (PyPI holds only empty
placeholders). The backend registers so that `--backend neuron` gives a clear, actionable error
instead of an unknown-name error, and so that the interface it needs stays honest: per-bucket
tracing (`GraphJob`), compiler flags (`default_flags`), and a target instance type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neuron_export.backends.base import Backend, CompiledGraph, GraphJob

NEURON_TARGETS = ("trn1", "trn2", "inf2")


class NeuronBackend(Backend):
    name = "neuron"
    file_extension = ".neff.pt"

    @property
    def default_target(self) -> str:
        return "trn1"

    def versions(self) -> dict[str, str]:
        return {"compiler_version": _neuronxcc_version(), "torch_version": torch.__version__}

    def default_flags(self, target: str) -> dict[str, Any]:
        # The flags optimum-neuron uses for decoders (../shared/notes/neuron-reference.md).
        return {"compiler_args": ["--auto-cast=none", "--model-type=transformer", "-O2"], "target": target}

    def check_available(self) -> None:
        """Raise the reason this backend cannot export here, before the checkpoint is loaded."""
        _require_sdk()
        raise _unverified()

    def compile(self, job: GraphJob, out_file: Path, target: str) -> CompiledGraph:
        if target not in NEURON_TARGETS:
            raise ValueError(f"backend 'neuron' targets {', '.join(NEURON_TARGETS)}, not '{target}'")
        _require_sdk()
        # With the SDK present this is where torch_neuronx.trace(job.module, job.example_inputs,
        # compiler_args=...) would run per bucket. It has never run on Neuron hardware, so it is
        # refused rather than shipped untested.
        raise _unverified()


def _unverified() -> Exception:
    from neuron_export.errors import ExportError

    return ExportError(
        "backend 'neuron' is declared (interface, flags, targets) but its trace path has not been "
        "verified on Neuron hardware and is disabled. Use --backend torch-aot."
    )


def _require_sdk():
    try:
        import torch_neuronx  # type: ignore[import-not-found]

        if not hasattr(torch_neuronx, "trace"):
            raise ImportError("placeholder package")
    except ImportError:
        from neuron_export.errors import ExportError

        raise ExportError(
            "backend 'neuron' needs the AWS Neuron SDK (torch-neuronx, neuronx-cc) on a Trainium/Inferentia "
            "instance; it is not installed here. Use --backend torch-aot on CPU/GPU machines."
        ) from None
    return torch_neuronx


def _neuronxcc_version() -> str:
    try:
        from importlib.metadata import version

        return version("neuronx-cc")
    except Exception:
        return "unavailable"
