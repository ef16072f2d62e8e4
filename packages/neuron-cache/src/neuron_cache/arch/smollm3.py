"""SmolLM3: Llama where some layers use no positional encoding (NoPE), listed in `no_rope_layers`."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_cache.arch.llama import Llama
from neuron_cache.arch.qwen2 import sliding_windows


class SmolLM3(Llama):
    model_types: ClassVar[tuple[str, ...]] = ("smollm3",)
    architectures: ClassVar[tuple[str, ...]] = ("SmolLM3ForCausalLM",)

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        # transformers' no_rope_layers[i] is 1 where layer i *uses* rope, 0 for a NoPE layer.
        return {"rope_layers": [bool(x) for x in cfg.no_rope_layers], "sliding_windows": sliding_windows(cfg)}
