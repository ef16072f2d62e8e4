"""The training plan and feature check, derived from the shared architecture description (neuron_cache.arch).

Name rule (the only one, the same for every architecture): a training parameter is named exactly like its
`CHECKPOINT` template with the layer index filled in (`layers.3.attn.qkv_proj.weight`). Its `ParamPlan`
reads the family's data: `CHECKPOINT` gives the sources, `SHARDING` the partition dim and rule, `segments`
the fused segment sizes, `replicable` which segments are kv heads (replicated when tp > kv heads) and
`granule` whether a segment splits in whole heads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from neuron_cache.arch import DecoderArch, Llama, family_for
from neuron_cache.arch.spec import field_default
from neuron_train.models.plan import ParamPlan, SplitKind

# DecoderArch fields the training modules interpret (any value). A field not listed here or in _CONDITIONAL
# must keep its default, so a feature the description gains later is refused until training implements it.
_IMPLEMENTED = frozenset({
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
    "head_dim", "rms_norm_eps", "hidden_act", "qkv_bias", "o_bias", "mlp_bias", "qk_norm", "tie_word_embeddings",
    "attention_scale", "embedding_multiplier", "residual_multiplier", "logits_divisor",
    "num_experts", "num_experts_per_tok", "norm_topk_prob", "moe_intermediate_size", "moe_layers",
    "router_aux_loss_coef", "routing_weights_fp32",
})
# Fields accepted only with values that mean "the feature is off"; the message says how to turn it off.
_CONDITIONAL: dict[str, tuple[Any, str]] = {
    "sliding_windows": (lambda v: v is None or all(w is None for w in v),
                        "sliding-window attention is not implemented for training; set use_sliding_window=false "
                        "(or sliding_window=null) in config.json to train with full causal attention"),
    "rope_layers": (lambda v: v is None or all(v),
                    "NoPE layers (no rotary embedding) are not implemented for training; use a checkpoint whose "
                    "layers all use rope"),
    "rotary_dim": (lambda v: v is None,
                   "partial rotary embeddings are not implemented for training; use partial_rotary_factor=1.0"),
}


class UnsupportedArchitectureError(ValueError):
    """A DecoderArch field whose value the training modules do not implement."""


def check_supported(arch: DecoderArch) -> None:
    """Refuse, up front, an architecture using a feature training does not implement."""
    for f in dataclasses.fields(arch):
        value = getattr(arch, f.name)
        if f.name in _IMPLEMENTED:
            continue
        if f.name in _CONDITIONAL:
            ok, fix = _CONDITIONAL[f.name]
            if not ok(value):
                raise UnsupportedArchitectureError(f"{arch.model_type}: {f.name}={value!r} is not supported: {fix}.")
            continue
        default = field_default(arch, f.name)  # MISSING for a new required field: no "off" value training could assume
        if default is dataclasses.MISSING or value != default:
            raise UnsupportedArchitectureError(
                f"{arch.model_type}: {f.name}={value!r} (default {default!r}) is a feature neuron-train does not "
                f"implement; train a checkpoint with {f.name}={default!r}, or implement it in neuron_train.models "
                "and list it in derive._IMPLEMENTED."
            )


def describe(config: Any) -> tuple[type[Llama], DecoderArch]:
    """The family and typed description of a Hugging Face config, checked for training support."""
    family = family_for(config.model_type)
    arch = family.arch(config)
    check_supported(arch)
    return family, arch


def derive_plan(family: type[Llama], arch: DecoderArch) -> dict[str, ParamPlan]:
    plan = {}
    for template, sources in family.CHECKPOINT.items():
        dim, rule = family.SHARDING.get(template, (None, None))
        if dim is None:  # replicated ("partial" biases are added once, after the reduction)
            plan[template] = ParamPlan(sources=sources)
            continue
        segments = tuple(family.segments(rule, arch) or ())
        replicable = family.replicable(rule) or [False] * max(1, len(segments))
        whole: SplitKind = "q_heads" if family.granule(template, arch) else "even"
        # A replicable segment is a block of kv heads: ShardContext splits or replicates it by num_kv_heads.
        kinds: tuple[SplitKind, ...] = tuple("kv_heads" if r else whole for r in replicable)
        plan[template] = ParamPlan(dim=dim, sources=sources, kinds=kinds, segments=segments)
    return plan


def training_plan(config: Any) -> dict[str, ParamPlan]:
    family, arch = describe(config)
    return derive_plan(family, arch)
