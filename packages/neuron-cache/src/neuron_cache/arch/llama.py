"""Llama: the base architecture. Every other file here subclasses it and overrides only what differs.

An architecture is three pieces of data, read by neuron-export's static decoder (`neuron_export/models/decoder.py`)
and by neuron-train's training modules:
- `arch()`: the Hugging Face config read into a typed `DecoderArch`;
- `CHECKPOINT`: our parameter name -> the checkpoint tensors concatenated (dim 0) into it;
- `SHARDING`: our parameter name -> tensor-parallel partition dim and fused segments.
"""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_cache.arch.spec import DecoderArch

ATTN = "model.layers.{i}.self_attn"
MLP = "model.layers.{i}.mlp"


class Llama:
    model_types: ClassVar[tuple[str, ...]] = ("llama",)
    architectures: ClassVar[tuple[str, ...]] = ("LlamaForCausalLM",)

    CHECKPOINT: ClassVar[dict[str, tuple[str, ...]]] = {
        "embed_tokens.weight": ("model.embed_tokens.weight",),
        "layers.{i}.input_layernorm.weight": ("model.layers.{i}.input_layernorm.weight",),
        "layers.{i}.attn.qkv_proj.weight": (f"{ATTN}.q_proj.weight", f"{ATTN}.k_proj.weight", f"{ATTN}.v_proj.weight"),
        "layers.{i}.attn.qkv_proj.bias": (f"{ATTN}.q_proj.bias", f"{ATTN}.k_proj.bias", f"{ATTN}.v_proj.bias"),
        "layers.{i}.attn.q_norm.weight": (f"{ATTN}.q_norm.weight",),
        "layers.{i}.attn.k_norm.weight": (f"{ATTN}.k_norm.weight",),
        "layers.{i}.attn.o_proj.weight": (f"{ATTN}.o_proj.weight",),
        "layers.{i}.attn.o_proj.bias": (f"{ATTN}.o_proj.bias",),
        "layers.{i}.post_attention_layernorm.weight": ("model.layers.{i}.post_attention_layernorm.weight",),
        "layers.{i}.mlp.gate_up_proj.weight": (f"{MLP}.gate_proj.weight", f"{MLP}.up_proj.weight"),
        "layers.{i}.mlp.gate_up_proj.bias": (f"{MLP}.gate_proj.bias", f"{MLP}.up_proj.bias"),
        "layers.{i}.mlp.down_proj.weight": (f"{MLP}.down_proj.weight",),
        "layers.{i}.mlp.down_proj.bias": (f"{MLP}.down_proj.bias",),
        "norm.weight": ("model.norm.weight",),
        "lm_head.weight": ("lm_head.weight",),
    }

    # partition_dim, and the name of the fused-segment rule (see `segments`) or of a layout (neuron_cache
    # SHARD_LAYOUTS: "vocab", "partial"); absent: replicated. neuron_export/models/parallel.py says why each is so.
    SHARDING: ClassVar[dict[str, tuple[int | None, str | None]]] = {
        "embed_tokens.weight": (0, "vocab"),
        "layers.{i}.attn.qkv_proj.weight": (0, "qkv"),
        "layers.{i}.attn.qkv_proj.bias": (0, "qkv"),
        "layers.{i}.attn.o_proj.weight": (1, None),
        "layers.{i}.attn.o_proj.bias": (None, "partial"),
        "layers.{i}.mlp.gate_up_proj.weight": (0, "gate_up"),
        "layers.{i}.mlp.gate_up_proj.bias": (0, "gate_up"),
        "layers.{i}.mlp.down_proj.weight": (1, None),
        "layers.{i}.mlp.down_proj.bias": (None, "partial"),
        "lm_head.weight": (0, "vocab"),
    }

    @classmethod
    def arch(cls, cfg: Any) -> DecoderArch:
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        fields: dict[str, Any] = dict(
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=head_dim,
            rms_norm_eps=cfg.rms_norm_eps,
            hidden_act=getattr(cfg, "hidden_act", "silu"),  # gemma calls it hidden_activation (its override)
            qkv_bias=getattr(cfg, "attention_bias", False),
            o_bias=getattr(cfg, "attention_bias", False),
            mlp_bias=getattr(cfg, "mlp_bias", False),
            tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            rotary_dim=cls.rotary_dim(cfg, head_dim),
        )
        # An architecture's overrides replace Llama's defaults (qwen2 sets qkv_bias itself).
        return DecoderArch(**{**fields, **cls.arch_overrides(cfg)})

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        """Fields an architecture sets beyond Llama's; subclasses override this."""
        return {}

    @classmethod
    def rotary_dim(cls, cfg: Any, head_dim: int) -> int | None:
        factor = (getattr(cfg, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
        return None if factor == 1.0 else int(head_dim * factor)

    @classmethod
    def granule(cls, template: str, arch: DecoderArch) -> int | None:
        """Attention projections shard in whole heads."""
        if ".attn.qkv_proj." in template or ".attn.o_proj.weight" in template:
            return arch.head_dim
        return None

    @classmethod
    def expert_dim(cls, template: str) -> int | None:
        """The dim enumerating experts (expert parallelism splits it into groups); None: not an expert tensor."""
        return None

    @classmethod
    def replicable(cls, rule: str | None) -> list[bool] | None:
        """kv heads may be replicated over more ranks than there are of them; q heads never."""
        return [False, True, True] if rule == "qkv" else None

    @classmethod
    def segments(cls, rule: str | None, arch: DecoderArch) -> list[int] | None:
        if rule == "qkv":
            kv = arch.num_kv_heads * arch.head_dim
            return [arch.num_heads * arch.head_dim, kv, kv]
        if rule == "gate_up":
            return [arch.intermediate_size, arch.intermediate_size]
        return None
