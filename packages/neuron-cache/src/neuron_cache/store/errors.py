"""Errors and warnings of the compile cache."""

from __future__ import annotations


class CacheError(RuntimeError):
    """The compile cache cannot do what was asked (bad input, a lock timeout, a compile_fn that wrote nothing)."""


class RemoteError(CacheError):
    """A remote (Hugging Face Hub repo or S3 prefix) could not be read or written."""


class CorruptEntryWarning(UserWarning):
    """A cache entry failed verification and was evicted; it is rebuilt (recompiled or pulled again)."""
