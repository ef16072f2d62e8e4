"""DistilBERT: BERT without token types and pooler, its own names, LayerNorm eps fixed at 1e-12."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_export.models.encoders.bert import Bert, pair, qkv
from neuron_export.models.encoders.spec import EncoderArch

LAYER = "{p}transformer.layer.{i}"
ATTN = f"{LAYER}.attention"


class DistilBert(Bert):
    model_types: ClassVar[tuple[str, ...]] = ("distilbert",)
    base_model_prefix: ClassVar[str] = "distilbert"

    CHECKPOINT: ClassVar[dict[str, tuple[str, ...]]] = {
        "embeddings.word.weight": ("{p}embeddings.word_embeddings.weight",),
        "embeddings.position.weight": ("{p}embeddings.position_embeddings.weight",),
        **pair("embeddings.norm", "{p}embeddings.LayerNorm"),
        **qkv(f"{ATTN}.q_lin", f"{ATTN}.k_lin", f"{ATTN}.v_lin"),
        **pair("layers.{i}.out", f"{ATTN}.out_lin"),
        **pair("layers.{i}.attn_norm", f"{LAYER}.sa_layer_norm"),
        **pair("layers.{i}.up", f"{LAYER}.ffn.lin1"),
        **pair("layers.{i}.down", f"{LAYER}.ffn.lin2"),
        **pair("layers.{i}.ffn_norm", f"{LAYER}.output_layer_norm"),
        **pair("mlm.dense", "vocab_transform"),
        **pair("mlm.norm", "vocab_layer_norm"),
        "mlm.decoder.weight": ("vocab_projector.weight",),
        "mlm.bias": ("vocab_projector.bias",),
        **pair("classifier.dense", "pre_classifier"),
        **pair("classifier.out", "classifier"),
        **pair("token_classifier", "classifier"),
        **pair("qa_outputs", "qa_outputs"),
    }

    @classmethod
    def arch(cls, cfg: Any, task: str) -> EncoderArch:
        return EncoderArch(
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.dim,
            intermediate_size=cfg.hidden_dim,
            num_layers=cfg.n_layers,
            num_heads=cfg.n_heads,
            layer_norm_eps=1e-12,  # hard-coded in modeling_distilbert, not in the config
            hidden_act=cfg.activation,
            max_position_embeddings=cfg.max_position_embeddings,
            type_vocab_size=0,
            num_labels=cfg.num_labels if task in ("text-classification", "token-classification") else 0,
            head_act=cfg.activation,
            classifier_act="relu",  # pre_classifier -> ReLU -> classifier
            tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", True)),
        )
