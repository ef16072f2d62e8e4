"""One cache entry: a directory holding the compiled graph file and its manifest, `entry.json`.

The manifest is the completion marker: it is written after the payload, locally inside a staging
directory that is renamed into place, and on a remote after the payload has been uploaded. A
directory or prefix without a valid manifest is not an entry and is never read.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuron_cache.store.key import check_key

MANIFEST = "entry.json"
MANIFEST_FORMAT = 1
_FILENAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_filename(filename: str) -> str:
    if not isinstance(filename, str) or not _FILENAME_RE.fullmatch(filename) or filename == MANIFEST:
        raise ValueError(
            f"compile cache filename {filename!r} must be a plain file name (letters, digits, '.', '_', '-'; "
            f"no '/'), other than {MANIFEST!r}; for example 'graph.pt2'"
        )
    return filename


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or inconsistent with its entry."""


@dataclass(kw_only=True, slots=True)
class Manifest:
    key: str
    file: str
    sha256: str
    size: int
    created: float = field(default_factory=time.time)
    meta: dict[str, Any] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        data = {
            "format": self.format, "key": self.key, "file": self.file, "sha256": self.sha256,
            "size": self.size, "created": self.created, "meta": self.meta,
        }
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, expected_key: str) -> Manifest:
        try:
            data = json.loads(text)
            manifest = cls(
                key=data["key"], file=data["file"], sha256=data["sha256"], size=int(data["size"]),
                created=float(data["created"]), meta=dict(data.get("meta") or {}), format=int(data["format"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ManifestError(f"unreadable {MANIFEST} ({err})") from err
        if manifest.format > MANIFEST_FORMAT:
            raise ManifestError(f"{MANIFEST} format {manifest.format} is newer than this reader ({MANIFEST_FORMAT})")
        if manifest.key != expected_key:
            raise ManifestError(f"{MANIFEST} names key {manifest.key}, expected {expected_key}")
        try:
            check_key(manifest.key)
            check_filename(manifest.file)
        except ValueError as err:
            raise ManifestError(str(err)) from err
        return manifest

    @classmethod
    def load(cls, entry_dir: Path, expected_key: str) -> Manifest:
        try:
            text = (entry_dir / MANIFEST).read_bytes()
        except OSError as err:
            raise ManifestError(f"missing {MANIFEST} ({err.strerror})") from err
        return cls.from_json(text, expected_key)


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheEntry:
    """An entry of the local store as listed (listing does not re-hash the payload)."""

    key: str
    path: Path  # the entry directory
    file: str
    sha256: str
    size: int  # bytes on disk: payload and manifest
    created: float
    last_access: float  # unix time of the last get_or_compile that returned it
    meta: dict[str, Any]
    problem: str | None = None  # why the manifest is unreadable; such an entry is evicted on its next read

    @property
    def file_path(self) -> Path:
        return self.path / self.file
