"""Errors raised while reading or validating an artifact.

Every error names the field, the offending value, what is allowed and how to fix it, because the
person reading it usually did not write the artifact and cannot guess which of 30 fields is wrong.
"""

from __future__ import annotations

from typing import Any


class NeuronConfigError(ValueError):
    """A `neuron_config.json` that does not satisfy the schema."""

    def __init__(self, field: str, value: Any, problem: str, allowed: str | None = None, fix: str | None = None):
        self.field = field
        self.value = value
        self.problem = problem
        self.allowed = allowed
        self.fix = fix
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        parts = [f"neuron_config field '{field}' = {shown}: {problem}."]
        if allowed:
            parts.append(f"Allowed: {allowed}.")
        if fix:
            parts.append(f"Fix: {fix}.")
        super().__init__(" ".join(parts))


class SchemaVersionError(NeuronConfigError):
    """The artifact was written by a newer producer than this reader understands."""


class ArtifactError(RuntimeError):
    """An artifact directory whose files do not match what its `neuron_config.json` lists."""
