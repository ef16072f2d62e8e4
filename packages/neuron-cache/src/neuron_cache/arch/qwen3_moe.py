"""Qwen3-MoE: Qwen3 attention with routed experts in place of the MLP (on the layers `decoder_sparse_step` and
`mlp_only_layers` leave sparse), top-k of a softmax router, renormalised when `norm_topk_prob`, no shared expert."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_cache.arch.qwen3 import Qwen3

EXPERTS = "model.layers.{i}.mlp.experts.{j}"


class Qwen3Moe(Qwen3):
    model_types: ClassVar[tuple[str, ...]] = ("qwen3_moe",)
    architectures: ClassVar[tuple[str, ...]] = ("Qwen3MoeForCausalLM",)

    # A source holding `{j}` is read once per expert and the experts are stacked on a new dim 0:
    # gate_up_proj is (experts, 2 * moe_intermediate, hidden), down_proj (experts, hidden, moe_intermediate).
    CHECKPOINT: ClassVar[dict[str, tuple[str, ...]]] = {
        **Qwen3.CHECKPOINT,
        "layers.{i}.moe.router.weight": ("model.layers.{i}.mlp.gate.weight",),
        "layers.{i}.moe.experts.gate_up_proj": (f"{EXPERTS}.gate_proj.weight", f"{EXPERTS}.up_proj.weight"),
        "layers.{i}.moe.experts.down_proj": (f"{EXPERTS}.down_proj.weight",),
    }
    # Experts split over ranks by their hidden dimension (each rank a slice of every expert's gate, up and
    # down, like the dense MLP); expert parallelism (whole experts per rank) is the export's choice on dim 0.
    SHARDING: ClassVar[dict[str, tuple[int | None, str | None]]] = {
        **Qwen3.SHARDING,
        "layers.{i}.moe.experts.gate_up_proj": (1, "expert_gate_up"),
        "layers.{i}.moe.experts.down_proj": (2, None),
    }

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        step, dense = getattr(cfg, "decoder_sparse_step", 1) or 1, set(getattr(cfg, "mlp_only_layers", None) or [])
        moe = [cfg.num_experts > 0 and i not in dense and (i + 1) % step == 0 for i in range(cfg.num_hidden_layers)]
        return {
            **super().arch_overrides(cfg),
            "num_experts": cfg.num_experts,
            "num_experts_per_tok": cfg.num_experts_per_tok,
            "norm_topk_prob": bool(cfg.norm_topk_prob),
            "moe_intermediate_size": cfg.moe_intermediate_size,
            "moe_layers": moe,
            "router_aux_loss_coef": cfg.router_aux_loss_coef if getattr(cfg, "output_router_logits", False) else 0.0,
        }

    @classmethod
    def expert_dim(cls, template: str) -> int | None:
        return 0 if ".moe.experts." in template else None

    @classmethod
    def segments(cls, rule: str | None, arch: Any) -> list[int] | None:
        if rule == "expert_gate_up":
            return [arch.expert_intermediate_size, arch.expert_intermediate_size]
        return super().segments(rule, arch)
