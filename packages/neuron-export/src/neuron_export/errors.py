"""Errors neuron-export reports to users (the CLI prints them without a traceback, on one line)."""

from __future__ import annotations

from neuron_cache import ArtifactError, NeuronConfigError
from neuron_cache.store import CacheError


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


class OutputError(ExportError):
    """OUTPUT cannot receive the artifact (not empty, the checkpoint itself, not writable)."""


# What the CLI prints as `Error: <message>`: ours, and the artifact/cache errors of neuron-cache.
USER_ERRORS = (ExportError, ArtifactError, NeuronConfigError, CacheError)


def one_line(err: BaseException | str) -> str:
    """A message on one line: other libraries' errors (transformers, safetensors) may span several."""
    return " ".join(str(err).split())


def nothing_written(err: Exception, output: str) -> ExportError:
    """`err` (a user error that ended an export) saying that OUTPUT was left as it was."""
    message = one_line(err)
    message = message if message.endswith(".") else f"{message}."
    cls = type(err) if isinstance(err, ExportError) else ExportError
    return cls(f"{message} Nothing was written to {output}.")
