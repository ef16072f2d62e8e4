"""Phi-3: Llama whose checkpoint already stores qkv and gate_up fused, with optional partial rotary."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_cache.arch.llama import ATTN, MLP, Llama


class Phi3(Llama):
    model_types: ClassVar[tuple[str, ...]] = ("phi3",)
    architectures: ClassVar[tuple[str, ...]] = ("Phi3ForCausalLM",)

    CHECKPOINT: ClassVar[dict[str, tuple[str, ...]]] = {
        **Llama.CHECKPOINT,
        "layers.{i}.attn.qkv_proj.weight": (f"{ATTN}.qkv_proj.weight",),
        "layers.{i}.mlp.gate_up_proj.weight": (f"{MLP}.gate_up_proj.weight",),
    }

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        window = getattr(cfg, "sliding_window", None)
        return {"sliding_windows": None if window is None else [window] * cfg.num_hidden_layers}
