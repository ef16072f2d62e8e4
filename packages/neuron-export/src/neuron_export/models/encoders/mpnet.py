"""MPNet: RoBERTa-style positions and heads, no token types, plus a relative position bias in every layer."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_export.models.encoders.bert import pair, qkv
from neuron_export.models.encoders.roberta import Roberta

LAYER = "{p}encoder.layer.{i}"
ATTN = f"{LAYER}.attention.attn"


class MPNet(Roberta):
    model_types: ClassVar[tuple[str, ...]] = ("mpnet",)
    base_model_prefix: ClassVar[str] = "mpnet"

    CHECKPOINT: ClassVar[dict[str, tuple[str, ...]]] = {
        **{k: v for k, v in Roberta.CHECKPOINT.items() if not k.startswith(("layers.", "embeddings.token_type"))},
        **qkv(f"{ATTN}.q", f"{ATTN}.k", f"{ATTN}.v"),
        **pair("layers.{i}.out", f"{ATTN}.o"),
        **pair("layers.{i}.attn_norm", f"{LAYER}.attention.LayerNorm"),
        **pair("layers.{i}.up", f"{LAYER}.intermediate.dense"),
        **pair("layers.{i}.down", f"{LAYER}.output.dense"),
        **pair("layers.{i}.ffn_norm", f"{LAYER}.output.LayerNorm"),
        "relative_attention_bias.weight": ("{p}encoder.relative_attention_bias.weight",),
    }

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        if cfg.relative_attention_num_buckets < 32:  # transformers always buckets into 32 (model.py)
            raise ValueError(
                f"relative_attention_num_buckets is {cfg.relative_attention_num_buckets}; transformers' MPNet indexes "
                "32 buckets whatever the config says, so a smaller table cannot run: use 32 (MPNet's default)"
            )
        # MPNetEmbeddings hard-codes padding_idx = 1 (config.pad_token_id is not read there).
        return {"position_offset": 2, "pad_token_id": 1, "type_vocab_size": 0, "head_act": "gelu",
                "relative_attention_num_buckets": cfg.relative_attention_num_buckets}
