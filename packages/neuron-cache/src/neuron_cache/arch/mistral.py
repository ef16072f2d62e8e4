"""Mistral: Llama with a sliding attention window on every layer."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_cache.arch.llama import Llama


class Mistral(Llama):
    model_types: ClassVar[tuple[str, ...]] = ("mistral",)
    architectures: ClassVar[tuple[str, ...]] = ("MistralForCausalLM",)

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        window = getattr(cfg, "sliding_window", None)
        return {"sliding_windows": None if window is None else [window] * cfg.num_hidden_layers}
