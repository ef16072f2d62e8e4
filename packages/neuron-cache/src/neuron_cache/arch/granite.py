"""Granite: Llama with multipliers on the embeddings, the residual branches, attention and logits."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_cache.arch.llama import Llama


class Granite(Llama):
    model_types: ClassVar[tuple[str, ...]] = ("granite",)
    architectures: ClassVar[tuple[str, ...]] = ("GraniteForCausalLM",)

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        return {
            "embedding_multiplier": cfg.embedding_multiplier,
            "residual_multiplier": cfg.residual_multiplier,
            "attention_scale": cfg.attention_multiplier,  # replaces head_dim ** -0.5
            "logits_divisor": cfg.logits_scaling,
        }
