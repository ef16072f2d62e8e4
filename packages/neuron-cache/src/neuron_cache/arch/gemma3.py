"""Gemma 3 (text): Llama with (1 + weight) RMSNorms, embeddings scaled by sqrt(hidden_size), a norm on each block's
output as well as its input, interleaved sliding-window and global layers each with its own rope table, q/k norms,
attention scaled by query_pre_attn_scalar ** -0.5, gelu(tanh) and optional final-logit soft-capping."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_cache.arch.llama import Llama

LAYER = "model.layers.{i}"
LAYER_TYPES = ("sliding_attention", "full_attention")


class Gemma3(Llama):
    model_types: ClassVar[tuple[str, ...]] = ("gemma3_text",)
    architectures: ClassVar[tuple[str, ...]] = ("Gemma3ForCausalLM",)

    # Our post_attention_layernorm is Llama's: the norm *before* the MLP, which Gemma calls pre_feedforward_layernorm;
    # Gemma's post_attention_layernorm and post_feedforward_layernorm normalise the blocks' outputs (sandwich_norms).
    CHECKPOINT: ClassVar[dict[str, tuple[str, ...]]] = {
        **Llama.CHECKPOINT,
        "layers.{i}.post_attention_layernorm.weight": (f"{LAYER}.pre_feedforward_layernorm.weight",),
        "layers.{i}.attn_output_norm.weight": (f"{LAYER}.post_attention_layernorm.weight",),
        "layers.{i}.mlp_output_norm.weight": (f"{LAYER}.post_feedforward_layernorm.weight",),
    }

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        types = list(cfg.layer_types)
        check_gemma(cfg, types)
        return {
            "hidden_act": cfg.hidden_activation,
            "qk_norm": True,
            "rms_norm_unit_offset": True,
            "embedding_normalizer": cfg.hidden_size**0.5,
            "sandwich_norms": True,
            "attention_scale": cfg.query_pre_attn_scalar**-0.5,
            "sliding_windows": [cfg.sliding_window if t == "sliding_attention" else None for t in types],
            "rope_layer_types": types,
            # attn_logit_softcapping is left out on purpose: transformers' Gemma3Attention never passes it to its
            # attention functions (Gemma 3 replaced Gemma 2's soft-capping by the q/k norms), so a config that sets
            # it runs uncapped there, and here.
            "final_logit_softcap": cfg.final_logit_softcapping,
        }


def check_gemma(cfg: Any, types: list[str]) -> None:
    """Refuse what the static decoder does not reproduce, naming the field and the fix."""
    if getattr(cfg, "use_bidirectional_attention", False):
        raise ValueError(
            f"{cfg.model_type}: use_bidirectional_attention=True (an embedding model's non-causal attention) is not "
            "supported; the decoder is causal. Export a checkpoint with use_bidirectional_attention false"
        )
    unknown = sorted(set(types) - set(LAYER_TYPES))
    if unknown:
        raise ValueError(f"{cfg.model_type}: layer_types holds {unknown}; supported: {', '.join(LAYER_TYPES)}. Fix "
                         "layer_types in config.json")
    if "sliding_attention" in types and not cfg.sliding_window:
        raise ValueError(f"{cfg.model_type}: sliding_window={cfg.sliding_window!r} but layer_types has "
                         "sliding_attention layers; set sliding_window in config.json to the model's window")
