"""neuron_infer."""

from neuron_infer.__about__ import __version__

__all__ = ["__version__"]
