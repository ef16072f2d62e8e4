"""Compile backends by name."""

from __future__ import annotations

from neuron_export.backends.base import Backend, CompiledGraph, GraphJob


def _registry() -> dict[str, type[Backend]]:
    from neuron_export.backends.neuron import NeuronBackend
    from neuron_export.backends.torch_aot import TorchAOTBackend, TorchExportBackend

    return {b.name: b for b in (TorchAOTBackend, TorchExportBackend, NeuronBackend)}


BACKEND_DESCRIPTIONS = {
    "torch-aot": "torch.export + AOTInductor package, weights bound at load (default; cpu, cuda)",
    "torch-export": "torch.export ExportedProgram run without C++ compilation (fast, for tests)",
    "neuron": "torch-neuronx / neuronx-cc for trn1, trn2, inf2 (needs the Neuron SDK; not on this machine)",
}


def get_backend(name: str) -> Backend:
    registry = _registry()
    if name not in registry:
        from neuron_export.errors import ExportError

        raise ExportError(f"unknown backend '{name}'. Available: {', '.join(registry)}")
    return registry[name]()


def describe_backends() -> list[str]:
    return [f"{name:14s} {text}" for name, text in BACKEND_DESCRIPTIONS.items()]


__all__ = ["Backend", "CompiledGraph", "GraphJob", "describe_backends", "get_backend"]

