"""Static-shape model definitions, one architecture per file, and the registry over them."""

from __future__ import annotations

from neuron_export.models.granite import Granite
from neuron_export.models.llama import Llama
from neuron_export.models.mistral import Mistral
from neuron_export.models.phi3 import Phi3
from neuron_export.models.qwen2 import Qwen2
from neuron_export.models.qwen3 import Qwen3
from neuron_export.models.smollm3 import SmolLM3

FAMILIES: tuple[type[Llama], ...] = (Llama, Mistral, Qwen2, Qwen3, Granite, SmolLM3, Phi3)
_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def family_for(model_type: str) -> type[Llama]:
    from neuron_export.errors import UnsupportedArchitectureError

    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"model_type '{model_type}' is not supported by neuron-export. "
            f"Supported: {', '.join(supported_model_types())}."
        ) from None
