"""Mixtral: Mistral attention with eight-way (num_local_experts) routed experts on every layer, top-k of a softmax
router always renormalised; each expert is a gated MLP stored as w1 (gate), w3 (up) and w2 (down)."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_cache.arch.mistral import Mistral
from neuron_cache.arch.qwen3_moe import Qwen3Moe

MOE = "model.layers.{i}.block_sparse_moe"


class Mixtral(Mistral):
    model_types: ClassVar[tuple[str, ...]] = ("mixtral",)
    architectures: ClassVar[tuple[str, ...]] = ("MixtralForCausalLM",)

    CHECKPOINT: ClassVar[dict[str, tuple[str, ...]]] = {
        **{k: v for k, v in Mistral.CHECKPOINT.items() if ".mlp." not in k},
        "layers.{i}.moe.router.weight": (f"{MOE}.gate.weight",),
        "layers.{i}.moe.experts.gate_up_proj": (f"{MOE}.experts.{{j}}.w1.weight", f"{MOE}.experts.{{j}}.w3.weight"),
        "layers.{i}.moe.experts.down_proj": (f"{MOE}.experts.{{j}}.w2.weight",),
    }
    SHARDING = Qwen3Moe.SHARDING
    segments = Qwen3Moe.segments
    expert_dim = Qwen3Moe.expert_dim

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        return {
            **super().arch_overrides(cfg),
            "num_experts": cfg.num_local_experts,
            "num_experts_per_tok": cfg.num_experts_per_tok,
            "norm_topk_prob": True,
            "routing_weights_fp32": True,
            "moe_intermediate_size": cfg.intermediate_size,
            "router_aux_loss_coef": cfg.router_aux_loss_coef if getattr(cfg, "output_router_logits", False) else 0.0,
        }
