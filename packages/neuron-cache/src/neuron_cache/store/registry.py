"""Registry of exported configurations: which shapes have been compiled for a model id.

One immutable JSON file per (model id, configuration): ``registry/<model slug>/<digest>.json``. The
digest covers the configuration minus what varies between identical exports (graph hashes,
checkpoint revision, metadata), so registering the same export twice writes nothing, and machines
that synchronize to one remote never conflict: their files are either identical or distinct.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from neuron_cache.config import NeuronConfig
from neuron_cache.store.key import canonical, canonical_json

FILTER_FIELDS = tuple(f.name for f in dataclasses.fields(NeuronConfig))
_NOT_STORED = ("weights",)  # the per-parameter sharding plan is large and says nothing about shapes
_NOT_IDENTITY = ("graphs", "metadata", "checkpoint_revision")
_REL_RE = re.compile(r"registry/[A-Za-z0-9._-]+/[0-9a-f]{64}\.json")
_SORT_FIELDS = ("task", "batch_size", "sequence_length", "tensor_parallel_size", "torch_dtype")


def model_slug(model_id: str) -> str:
    if not isinstance(model_id, str) or not model_id.strip():
        raise ValueError(f"model_id {model_id!r} must be a non-empty string such as 'meta-llama/Llama-3.2-1B'")
    return re.sub(r"[^A-Za-z0-9._-]", "_", model_id.strip().replace("/", "--"))


def is_registry_path(rel: str) -> bool:
    return bool(_REL_RE.fullmatch(rel))


def _target_matches(value: Any, wanted: Any) -> bool:
    if isinstance(value, dict):
        return any(str(value.get(k)) == str(wanted) for k in ("device", "backend", "instance_type"))
    return str(value) == str(wanted)


def matches(config: dict[str, Any], filters: dict[str, Any]) -> bool:
    for name, wanted in filters.items():
        value = config.get(name)
        if name == "target":
            if not _target_matches(value, wanted):
                return False
        elif value != wanted and str(value) != str(wanted):
            return False
    return True


class Registry:
    def __init__(self, store_root: Path) -> None:
        self.store_root = store_root
        self.dir = store_root / "registry"

    def add(self, model_id: str, neuron_config: dict[str, Any] | NeuronConfig) -> Path:
        config = neuron_config.to_dict() if isinstance(neuron_config, NeuronConfig) else neuron_config
        if not isinstance(config, dict):
            raise TypeError(f"register_export: neuron_config must be a dict or NeuronConfig, not {type(config).__name__}")
        stored = canonical({k: v for k, v in config.items() if k not in _NOT_STORED}, "neuron_config")
        identity = {k: v for k, v in stored.items() if k not in _NOT_IDENTITY}
        digest = hashlib.sha256(canonical_json({"model_id": model_id, "config": identity}).encode()).hexdigest()
        path = self.dir / model_slug(model_id) / f"{digest}.json"
        if not path.exists():
            record = {"model_id": model_id, "registered_at": time.time(), "neuron_config": stored}
            self.install(self.rel(path), (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
        return path

    def rel(self, path: Path) -> str:
        return path.relative_to(self.store_root).as_posix()

    def install(self, rel: str, data: bytes) -> Path:
        """Write one registry file atomically (also used for files pulled from a remote)."""
        if not is_registry_path(rel):
            raise ValueError(f"{rel!r} is not a registry file path (registry/<model slug>/<sha256>.json)")
        path = self.store_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def files(self, model_id: str | None = None) -> list[str]:
        """Registry file paths relative to the store root (all models, or one)."""
        base = self.dir / model_slug(model_id) if model_id is not None else self.dir
        pattern = "*.json" if model_id is not None else "*/*.json"
        return sorted(self.rel(p) for p in base.glob(pattern)) if base.is_dir() else []

    def models(self) -> list[str]:
        return sorted({r["model_id"] for rel in self.files() if (r := self._read(rel)) is not None})

    def records(self, model_id: str) -> list[dict[str, Any]]:
        found = [self._read(rel) for rel in self.files(model_id)]
        return [r for r in found if r is not None and r.get("model_id") == model_id]

    def lookup(self, model_id: str, **filters: Any) -> list[dict[str, Any]]:
        """The registered neuron_config dicts of `model_id` that match every non-None filter."""
        unknown = sorted(set(filters) - set(FILTER_FIELDS))
        if unknown:
            raise ValueError(f"lookup filter {unknown[0]!r} is not a neuron_config field; allowed: {', '.join(FILTER_FIELDS)}")
        wanted = {k: v for k, v in filters.items() if v is not None}
        configs = [r["neuron_config"] for r in self.records(model_id) if matches(r["neuron_config"], wanted)]
        return sorted(configs, key=lambda c: tuple(str(c.get(f, "")).zfill(12) for f in _SORT_FIELDS))

    def _read(self, rel: str) -> dict[str, Any] | None:
        try:
            record = json.loads((self.store_root / rel).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("neuron_config"), dict) else None
