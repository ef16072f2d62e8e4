"""Qwen3: Llama with an RMSNorm over each head of q and k, applied before rope."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_cache.arch.llama import Llama
from neuron_cache.arch.qwen2 import sliding_windows


class Qwen3(Llama):
    model_types: ClassVar[tuple[str, ...]] = ("qwen3",)
    architectures: ClassVar[tuple[str, ...]] = ("Qwen3ForCausalLM",)

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        return {"qk_norm": True, "sliding_windows": sliding_windows(cfg)}
