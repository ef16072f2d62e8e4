"""Architecture descriptions: one file per Hugging Face architecture, shared by neuron-export and neuron-train.

Each family (a subclass of `Llama`, differing only where the model differs) is data, no torch:
- `arch(cfg)`: the Hugging Face config read into a typed `DecoderArch` (spec.py);
- `CHECKPOINT`: our parameter name -> the checkpoint tensors it is built from;
- `SHARDING` with `segments`, `granule` and `replicable`: the tensor-parallel plan (kv-head replication
  included).
neuron-export builds static graphs from them, neuron-train its tensor-parallel training modules; adding an
architecture means adding a file here and a line below.
"""

from __future__ import annotations

from neuron_cache.arch.gemma2 import Gemma2
from neuron_cache.arch.gemma3 import Gemma3
from neuron_cache.arch.granite import Granite
from neuron_cache.arch.llama import Llama
from neuron_cache.arch.mistral import Mistral
from neuron_cache.arch.mixtral import Mixtral
from neuron_cache.arch.phi3 import Phi3
from neuron_cache.arch.qwen2 import Qwen2
from neuron_cache.arch.qwen3 import Qwen3
from neuron_cache.arch.qwen3_moe import Qwen3Moe
from neuron_cache.arch.smollm3 import SmolLM3
from neuron_cache.arch.spec import DecoderArch

FAMILIES: tuple[type[Llama], ...] = (Llama, Mistral, Qwen2, Qwen3, Granite, SmolLM3, Phi3, Mixtral, Qwen3Moe, Gemma2,
                                     Gemma3)
_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}
# Model types close to a supported one that are refused with their own fix.
_REFUSED = {
    "gemma3": "the multimodal Gemma 3 (Gemma3ForConditionalGeneration: a vision tower, and the text decoder under "
              "model.language_model.* with its config in text_config) is not supported; its text decoder is "
              "(model_type gemma3_text). Export a text-only Gemma 3 checkpoint (Gemma3ForCausalLM, e.g. "
              "google/gemma-3-1b-it), or save one: Gemma3ForCausalLM(config.text_config) with the "
              "model.language_model.* weights loaded as model.* and lm_head tied to the embeddings",
}

__all__ = ["FAMILIES", "DecoderArch", "Llama", "RefusedArchitectureError", "UnknownArchitectureError", "family_for",
           "supported_model_types"]


class UnknownArchitectureError(KeyError):
    """A model_type no description covers."""

    def __str__(self) -> str:
        return str(self.args[0])


class RefusedArchitectureError(UnknownArchitectureError):
    """A model_type close to a supported one, refused with its own fix (the message says it all)."""


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def family_for(model_type: str) -> type[Llama]:
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        if model_type in _REFUSED:
            raise RefusedArchitectureError(f"model_type '{model_type}': {_REFUSED[model_type]}.") from None
        raise UnknownArchitectureError(
            f"model_type '{model_type}' has no architecture description. Supported: {', '.join(supported_model_types())}."
        ) from None
