"""Compile backends by name."""

from __future__ import annotations

import torch

from neuron_export.backends.base import Backend, CompiledGraph, GraphJob, KernelChoice
from neuron_export.backends.neuron import NEURON_TARGETS
from neuron_export.errors import ExportError

# An out-of-tree compile backend adds itself without editing neuron-export: an entry point in this group, named
# after the backend, pointing at a `Backend` subclass. Its graphs are run by the loader registered under the same
# name in neuron-infer's `neuron_infer.backends` group (neuron_infer/graphs.py). Built-in names win.
ENTRY_POINT_GROUP = "neuron_export.backends"


def _registry() -> dict[str, type[Backend]]:
    from neuron_export.backends.neuron import NeuronBackend
    from neuron_export.backends.torch_aot import TorchAOTBackend, TorchExportBackend

    builtin = {b.name: b for b in (TorchAOTBackend, TorchExportBackend, NeuronBackend)}
    return {**plugin_backends(), **builtin}


def plugin_backends() -> dict[str, type[Backend]]:
    from importlib.metadata import entry_points

    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        backend = ep.load()
        if not (isinstance(backend, type) and issubclass(backend, Backend)):
            raise ExportError(f"entry point {ep.name} = {ep.value} in group {ENTRY_POINT_GROUP} is not a "
                              "neuron_export.backends.Backend subclass; fix or uninstall the package that declares it")
        found[ep.name] = backend
    return found


BACKEND_DESCRIPTIONS = {
    "torch-aot": "torch.export + AOTInductor package, weights bound at load (default; cpu, cuda)",
    "torch-export": "torch.export ExportedProgram run without C++ compilation (fast, for tests)",
    "neuron": "torch-neuronx / neuronx-cc for trn1, trn2, inf2 (needs the Neuron SDK; not on this machine)",
}


def get_backend(name: str) -> Backend:
    registry = _registry()
    if name not in registry:
        raise ExportError(f"unknown backend '{name}'. Available: {', '.join(registry)}")
    return registry[name]()


# The devices each backend compiles for. torch-export graphs are traced and run on the CPU only.
TARGETS = {"torch-aot": ("cpu", "cuda"), "torch-export": ("cpu",), "neuron": NEURON_TARGETS}


def check_target(backend: Backend, target: str) -> None:
    """Refuse, before any work, a target that `backend` cannot compile for on this host."""
    allowed = TARGETS.get(backend.name, (backend.default_target,))
    if target in NEURON_TARGETS and backend.name != "neuron":
        raise ExportError(
            f"--target {target} is a Neuron device (Trainium/Inferentia), but backend {backend.name} compiles for "
            f"{', '.join(allowed)}. Drop --target to compile for this machine, or use --backend neuron on a "
            "Trainium/Inferentia host with the Neuron SDK"
        )
    if target not in allowed:
        raise ExportError(f"--target {target!r}: backend {backend.name} compiles for {', '.join(allowed)}; "
                          "drop --target or choose one of those (see --list-backends)")
    if target == "cuda" and not torch.cuda.is_available():
        build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        raise ExportError(
            f"--target cuda: this host has no usable CUDA device (torch {torch.__version__} is {build}). "
            "Drop --target to compile for the CPU, or export on a GPU machine with a CUDA build of torch"
        )
    check = getattr(backend, "check_available", None)
    if check is not None:
        check()


def describe_backends() -> list[str]:
    plugins = {name: f"(plugin) {(cls.__doc__ or cls.__name__).strip().splitlines()[0]}"
               for name, cls in plugin_backends().items() if name not in BACKEND_DESCRIPTIONS}
    return [f"{name:14s} {text}" for name, text in {**BACKEND_DESCRIPTIONS, **plugins}.items()]


__all__ = ["TARGETS", "Backend", "CompiledGraph", "GraphJob", "KernelChoice", "check_target", "describe_backends",
           "get_backend"]

