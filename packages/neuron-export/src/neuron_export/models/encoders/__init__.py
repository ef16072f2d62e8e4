"""Static-shape encoders (BERT-like families, one per file) and embeddings from decoder checkpoints; the
registry over both."""

from __future__ import annotations

from neuron_cache.arch.llama import Llama
from neuron_export.models.encoders.bert import Bert
from neuron_export.models.encoders.distilbert import DistilBert
from neuron_export.models.encoders.mpnet import MPNet
from neuron_export.models.encoders.roberta import Roberta

ENCODER_FAMILIES: tuple[type[Bert], ...] = (Bert, Roberta, DistilBert, MPNet)
_BY_MODEL_TYPE = {t: f for f in ENCODER_FAMILIES for t in f.model_types}

# transformers class-name suffix -> task (a bare *Model, or no architectures, is feature-extraction)
_TASK_SUFFIXES = {
    "ForMaskedLM": "fill-mask",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
}


def supported_encoder_types() -> list[str]:
    """Encoder model types, and the decoder ones that embed (the last token of the final norm, by default)."""
    from neuron_export.models import supported_model_types

    return sorted({*_BY_MODEL_TYPE, *supported_model_types()})


def encoder_family_for(model_type: str) -> type[Bert] | type[Llama]:
    """The encoder family of `model_type`, or its decoder family (an embedding model from a decoder)."""
    from neuron_export.errors import UnsupportedArchitectureError
    from neuron_export.models import supported_model_types

    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    if model_type in supported_model_types():
        from neuron_export.models import family_for

        return family_for(model_type)
    raise UnsupportedArchitectureError(
        f"model_type '{model_type}' is not supported as an encoder or embedding model. "
        f"Supported: {', '.join(supported_encoder_types())}."
    )


def encoder_task_for(architectures: list[str] | None) -> str:
    """The task a checkpoint was saved for, from config.architectures (e.g. BertForMaskedLM -> fill-mask)."""
    for name in architectures or []:
        for suffix, task in _TASK_SUFFIXES.items():
            if name.endswith(suffix):
                return task
    return "feature-extraction"
