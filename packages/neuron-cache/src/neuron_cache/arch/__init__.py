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

FAMILIES: tuple[type[Llama], ...] = (Llama, Mistral, Qwen2, Qwen3, Granite, SmolLM3, Phi3, Mixtral, Qwen3Moe)
_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}

__all__ = ["FAMILIES", "DecoderArch", "Llama", "UnknownArchitectureError", "family_for", "supported_model_types"]


class UnknownArchitectureError(KeyError):
    """A model_type no description covers."""

    def __str__(self) -> str:
        return str(self.args[0])


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def family_for(model_type: str) -> type[Llama]:
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnknownArchitectureError(
            f"model_type '{model_type}' has no architecture description. Supported: {', '.join(supported_model_types())}."
        ) from None
