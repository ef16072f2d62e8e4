"""The typed architecture description every family file builds from a Hugging Face config (torch-free).

neuron-export's static graphs and neuron-train's parallel modules read only this: a feature of an
architecture is a field here, interpreted once by each side, never a per-model code path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(kw_only=True, slots=True)
class DecoderArch:
    """Everything about a Llama-family transformer that changes the graph (not the weights).

    Each architecture file builds one of these from a Hugging Face config; the model modules (neuron-export's
    static decoder, neuron-train's training modules) read nothing else.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    hidden_act: str = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # qwen3: RMSNorm over head_dim on q and k, before rope
    tie_word_embeddings: bool = False
    rotary_dim: int | None = None  # None: the whole head_dim is rotated
    rope_layers: list[bool] | None = None  # smollm3: False marks a NoPE layer; None: rope everywhere
    sliding_windows: list[int | None] | None = None  # per layer; None: full causal attention
    attention_scale: float | None = None  # None: head_dim ** -0.5 (granite: attention_multiplier)
    embedding_multiplier: float = 1.0  # granite
    residual_multiplier: float = 1.0  # granite
    logits_divisor: float = 1.0  # granite: logits_scaling
    # Mixture of experts (mixtral, qwen3_moe). 0 experts: every layer has the dense MLP.
    num_experts: int = 0
    num_experts_per_tok: int = 0  # top-k experts per token
    norm_topk_prob: bool = True  # renormalise the top-k routing weights to sum to 1 (mixtral always does)
    moe_intermediate_size: int | None = None  # each expert's hidden size (None: intermediate_size)
    moe_layers: list[bool] | None = None  # per layer: True = routed experts, False = dense MLP; None: all MoE
    # mixtral scales the expert outputs by the fp32 routing weights and casts the product; qwen3_moe casts the
    # weights to the activations' dtype first (the same in fp32, not in 16 bits)
    routing_weights_fp32: bool = False
    router_aux_loss_coef: float = 0.0  # training: load-balancing loss weight (0: transformers adds none)
    # Gemma 2 and 3. rms_norm_unit_offset: every RMSNorm (q/k norms too) scales by (1 + weight), multiplied in fp32 and
    # only then cast back (Llama casts first, then scales by the weight in its own dtype).
    rms_norm_unit_offset: bool = False
    embedding_normalizer: float | None = None  # sqrt(hidden_size), rounded to the hidden dtype first, as transformers does
    sandwich_norms: bool = False  # RMSNorm on each block's output too, before it joins the residual
    # Per layer: the rope_parameters entry its cos/sin table is built from (gemma3: "sliding_attention" with the local
    # base, "full_attention" with the global base and scaling); None: one table, from rope_parameters itself.
    rope_layer_types: list[str] | None = None
    attn_logit_softcap: float | None = None  # scores -> tanh(scores / c) * c before the mask (no fused SDPA then)
    final_logit_softcap: float | None = None  # logits -> tanh(logits / c) * c

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_kv_heads}) for grouped-query attention"
            )
        if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} must be between 1 and the number of experts "
                f"({self.num_experts})"
            )

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    def is_moe_layer(self, layer: int) -> bool:
        return self.num_experts > 0 and (self.moe_layers is None or self.moe_layers[layer])

    @property
    def scale(self) -> float:
        return self.attention_scale if self.attention_scale is not None else self.head_dim**-0.5

    def uses_rope(self, layer: int) -> bool:
        return self.rope_layers is None or self.rope_layers[layer]

    def sliding_window(self, layer: int) -> int | None:
        return None if self.sliding_windows is None else self.sliding_windows[layer]

    @property
    def rope_kinds(self) -> list[str | None]:
        """The distinct rope tables, in a fixed order (rope_parameters keys; [None]: the one table)."""
        return [None] if self.rope_layer_types is None else sorted(set(self.rope_layer_types))

    def rope_table(self, layer: int) -> int:
        """Index in `rope_kinds` of the table `layer` rotates q and k by."""
        return 0 if self.rope_layer_types is None else self.rope_kinds.index(self.rope_layer_types[layer])


def field_default(arch: DecoderArch, name: str) -> Any:
    """The default of `arch`'s field `name` (read from its class: DecoderArch or a subclass), the value meaning
    "this feature is off"; dataclasses.MISSING for a required field, which has none. A model that interprets only
    some fields refuses an architecture whose other fields differ from it (neuron-train's derive.py, neuron-export's
    decoder embeddings)."""
    f = type(arch).__dataclass_fields__[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING
