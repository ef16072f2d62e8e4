"""Qwen2: Llama with biases on q, k and v (not on o), and an optional sliding window on upper layers."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_cache.arch.llama import Llama


class Qwen2(Llama):
    model_types: ClassVar[tuple[str, ...]] = ("qwen2",)
    architectures: ClassVar[tuple[str, ...]] = ("Qwen2ForCausalLM",)

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        return {"qkv_bias": True, "o_bias": False, "sliding_windows": sliding_windows(cfg)}


def sliding_windows(cfg: Any) -> list[int | None] | None:
    """Per-layer windows from `layer_types` (transformers' own record of which layers slide)."""
    if not getattr(cfg, "use_sliding_window", False) or getattr(cfg, "sliding_window", None) is None:
        return None
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    return [cfg.sliding_window if t == "sliding_attention" else None for t in types]
