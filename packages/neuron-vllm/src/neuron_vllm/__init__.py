"""neuron_vllm."""

from neuron_vllm.__about__ import __version__

__all__ = ["__version__"]
