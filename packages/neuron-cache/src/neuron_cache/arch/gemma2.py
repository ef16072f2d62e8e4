"""Gemma 2: Gemma 3 without q/k norms, with one rope table for every layer and tanh soft-capping of the attention
scores (attn_logit_softcapping, which transformers' Gemma 2 applies and Gemma 3 does not) and of the logits."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_cache.arch.gemma3 import Gemma3


class Gemma2(Gemma3):
    model_types: ClassVar[tuple[str, ...]] = ("gemma2",)
    architectures: ClassVar[tuple[str, ...]] = ("Gemma2ForCausalLM",)

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        return {**super().arch_overrides(cfg), "qk_norm": False, "rope_layer_types": None,
                "attn_logit_softcap": cfg.attn_logit_softcapping}
