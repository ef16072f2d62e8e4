"""BERT: the base encoder family. The others subclass it and override only what differs.

An encoder family is data beside the shared module (`model.py`):
- `arch()`: the Hugging Face config read into a typed `EncoderArch`;
- `CHECKPOINT`: our parameter name -> the checkpoint tensors concatenated (dim 0) into it. `{p}` stands
  for the base model's prefix (`bert.` in a BertForMaskedLM file, nothing in a BertModel/sentence-transformers
  one); head tensors are never prefixed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_export.models.encoders.spec import EncoderArch

LAYER = "{p}encoder.layer.{i}"
SELF = f"{LAYER}.attention.self"


def qkv(q: str, k: str, v: str) -> dict[str, tuple[str, ...]]:
    return {f"layers.{{i}}.qkv.{w}": (f"{q}.{w}", f"{k}.{w}", f"{v}.{w}") for w in ("weight", "bias")}


def pair(ours: str, theirs: str) -> dict[str, tuple[str, ...]]:
    """A Linear or LayerNorm: weight and bias."""
    return {f"{ours}.{w}": (f"{theirs}.{w}",) for w in ("weight", "bias")}


class Bert:
    model_types: ClassVar[tuple[str, ...]] = ("bert",)
    base_model_prefix: ClassVar[str] = "bert"

    CHECKPOINT: ClassVar[dict[str, tuple[str, ...]]] = {
        "embeddings.word.weight": ("{p}embeddings.word_embeddings.weight",),
        "embeddings.position.weight": ("{p}embeddings.position_embeddings.weight",),
        "embeddings.token_type.weight": ("{p}embeddings.token_type_embeddings.weight",),
        **pair("embeddings.norm", "{p}embeddings.LayerNorm"),
        **qkv(f"{SELF}.query", f"{SELF}.key", f"{SELF}.value"),
        **pair("layers.{i}.out", f"{LAYER}.attention.output.dense"),
        **pair("layers.{i}.attn_norm", f"{LAYER}.attention.output.LayerNorm"),
        **pair("layers.{i}.up", f"{LAYER}.intermediate.dense"),
        **pair("layers.{i}.down", f"{LAYER}.output.dense"),
        **pair("layers.{i}.ffn_norm", f"{LAYER}.output.LayerNorm"),
        # heads
        **pair("mlm.dense", "cls.predictions.transform.dense"),
        **pair("mlm.norm", "cls.predictions.transform.LayerNorm"),
        "mlm.decoder.weight": ("cls.predictions.decoder.weight",),  # absent when tied: see model.py
        "mlm.bias": ("cls.predictions.bias",),
        **pair("classifier.dense", "{p}pooler.dense"),
        **pair("classifier.out", "classifier"),
        **pair("token_classifier", "classifier"),
        **pair("qa_outputs", "qa_outputs"),
    }

    @classmethod
    def arch(cls, cfg: Any, task: str) -> EncoderArch:
        fields: dict[str, Any] = dict(
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=cfg.num_attention_heads,
            layer_norm_eps=cfg.layer_norm_eps,
            hidden_act=cfg.hidden_act,
            max_position_embeddings=cfg.max_position_embeddings,
            type_vocab_size=getattr(cfg, "type_vocab_size", 0),
            pad_token_id=getattr(cfg, "pad_token_id", None) or 0,
            num_labels=cfg.num_labels if task in ("text-classification", "token-classification") else 0,
            head_act=cfg.hidden_act,
            tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", True)),
        )
        return EncoderArch(**{**fields, **cls.arch_overrides(cfg)})

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        """Fields a family sets beyond BERT's; subclasses override this."""
        return {}
