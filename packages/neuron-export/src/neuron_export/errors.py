"""Errors neuron-export reports to users (the CLI prints them without a traceback)."""

from __future__ import annotations


class ExportError(Exception):
    """Base class: a problem the user can fix from the message."""


class UnsupportedArchitectureError(ExportError):
    pass


class ShapeError(ExportError):
    pass


class MissingWeightsError(ExportError):
    pass


class CheckpointError(ExportError):
    pass


class ValidationFailedError(ExportError):
    pass
