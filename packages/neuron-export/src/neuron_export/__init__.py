"""neuron_export."""

from neuron_export.__about__ import __version__

__all__ = ["__version__"]
