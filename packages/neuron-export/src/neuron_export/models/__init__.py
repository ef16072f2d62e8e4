"""Static-shape model definitions. The architectures themselves are described in neuron_cache.arch (shared
with neuron-train); this package builds graphs from those descriptions."""

from __future__ import annotations

from neuron_cache.arch import FAMILIES, Llama, RefusedArchitectureError, UnknownArchitectureError, supported_model_types
from neuron_cache.arch import family_for as _family_for

__all__ = ["FAMILIES", "Llama", "family_for", "supported_model_types"]


def family_for(model_type: str) -> type[Llama]:
    from neuron_export.errors import UnsupportedArchitectureError

    try:
        return _family_for(model_type)
    except RefusedArchitectureError as err:
        raise UnsupportedArchitectureError(str(err)) from err
    except UnknownArchitectureError as err:
        raise UnsupportedArchitectureError(
            f"model_type '{model_type}' is not supported by neuron-export. "
            f"Supported: {', '.join(supported_model_types())}."
        ) from err
