"""Helpers shared by the compile-cache tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("_worker.py")


def make_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


class Compiler:
    """A compile_fn: writes `payload` (default: derived from the call number) and counts its calls."""

    def __init__(self, payload: bytes | None = None) -> None:
        self.payload = payload
        self.calls = 0

    def __call__(self, out: Path) -> None:
        self.calls += 1
        out.write_bytes(self.payload if self.payload is not None else f"graph #{self.calls}\n".encode() * 100)


def never_compile(out: Path) -> None:
    raise AssertionError(f"compile_fn was called for {out}, but the entry should have been reused")


def neuron_config(**changes: Any) -> dict[str, Any]:
    """A minimal valid neuron_config.json dict (as NeuronConfig.to_dict() would write it)."""
    config: dict[str, Any] = {
        "schema_version": 1,
        "producer": {"package": "neuron-export", "version": "0.1.0"},
        "task": "text-generation", "model_type": "llama", "architecture": "LlamaForCausalLM",
        "checkpoint_id": "org/tiny-llama", "batch_size": 1, "max_batch_size": 1, "sequence_length": 256,
        "max_context_length": 128, "context_buckets": [64, 128], "tensor_parallel_size": 1, "torch_dtype": "bfloat16",
        "target": {"backend": "torch-aot", "device": "cpu", "compiler_version": "2.13.0", "torch_version": "2.13.0"},
        "graphs": {"token_generation": {"file": "graphs/tg.pt2", "sha256": "0" * 64, "role": "token_generation"}},
        "weights": {"files": [{"path": "weights/model.safetensors", "sha256": "1" * 64}]},
    }
    config.update(changes)
    return config

