"""RoBERTa (and XLM-RoBERTa, CamemBERT): BERT with padding-aware positions and its own heads."""

from __future__ import annotations

from typing import Any, ClassVar

from neuron_export.models.encoders.bert import Bert, pair


class Roberta(Bert):
    model_types: ClassVar[tuple[str, ...]] = ("roberta", "xlm-roberta", "camembert")
    base_model_prefix: ClassVar[str] = "roberta"

    CHECKPOINT: ClassVar[dict[str, tuple[str, ...]]] = {
        **{k: v for k, v in Bert.CHECKPOINT.items() if not k.startswith(("mlm.", "classifier."))},
        **pair("mlm.dense", "lm_head.dense"),
        **pair("mlm.norm", "lm_head.layer_norm"),
        "mlm.decoder.weight": ("lm_head.decoder.weight",),
        "mlm.bias": ("lm_head.bias",),
        # no pooler: the head's own dense + tanh over the <s> token
        **pair("classifier.dense", "classifier.dense"),
        **pair("classifier.out", "classifier.out_proj"),
    }

    @classmethod
    def arch_overrides(cls, cfg: Any) -> dict[str, Any]:
        # Positions count from padding_idx + 1 (the first rows of the table are never used by real tokens);
        # the LM head's transform is always gelu, whatever hidden_act says.
        return {"position_offset": cfg.pad_token_id + 1, "head_act": "gelu"}
