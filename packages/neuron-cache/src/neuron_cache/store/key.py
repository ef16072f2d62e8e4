"""The cache key of one compiled graph: a sha256 over everything that can change the graph.

Rule for the model config: a field is dropped only when it certainly cannot change the compiled
graph. A field kept by mistake costs a recompile; a field dropped by mistake serves a wrong graph.
Compiled graphs hold no weights (weights bind at load), so every fine-tune of an architecture with
the same shapes shares its graphs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

KEY_VERSION = 1  # bump when the derivation below changes: every old key then misses
BACKEND_FIELDS = ("name", "compiler_version", "torch_version", "package_version")
_KEY_RE = re.compile(r"[0-9a-f]{16,128}")

# Dropped from the model config (and from nested sub-configs such as text_config), with the reason.
_NOT_IN_GRAPH: dict[str, str] = {
    "_name_or_path": "where the checkpoint was loaded from; weights are not part of the graph",
    "_commit_hash": "revision of the checkpoint; weights are not part of the graph",
    "transformers_version": "version of the library that wrote config.json; graph code is keyed by backend.package_version",
    "torch_dtype": "storage dtype of the checkpoint; the compile dtype is shape_fields['torch_dtype']",
    "dtype": "transformers 5 name of torch_dtype (same reason)",
    "bos_token_id": "used by the host-side generation loop only",
    "eos_token_id": "used by the host-side stopping criteria only",
    "decoder_start_token_id": "used by the host-side generation loop only",
    "id2label": "label names; their count is kept as num_labels (it sizes a classification head)",
    "label2id": "label names (same reason as id2label)",
    "initializer_range": "only used to initialise weights, which are not in the graph",
    "use_cache": "an eager-mode switch; the KV-cache layout is decided by the graph role",
    "output_attentions": "an eager-mode default; a graph's outputs are fixed by its role (the exporter passes them explicitly)",
    "output_hidden_states": "an eager-mode default (same reason as output_attentions)",
    "return_dict": "Python return container of eager mode; a traced graph returns tensors",
    "finetuning_task": "free text",
    "task_specific_params": "pipeline defaults used by the host",
    "tokenizer_class": "host-side tokenizer choice",
    "prefix": "host-side prompt prefix",
}
# Deliberately KEPT (they look like metadata but do change the graph):
# - architectures: selects the head class (ForCausalLM vs ForSequenceClassification);
# - pad_token_id: RoBERTa-style models bake it into the position-id computation;
# - tie_word_embeddings: tied weights are one graph parameter instead of two, so the signature changes;
# - problem_type and dropout rates: they change training graphs (neuron-train uses this cache too).
NON_GRAPH_CONFIG_FIELDS: frozenset[str] = frozenset(_NOT_IN_GRAPH)


def why_not_in_graph(field: str) -> str | None:
    """The reason `field` is left out of the key, or None when it is kept."""
    return _NOT_IN_GRAPH.get(field)


def graph_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The model config minus NON_GRAPH_CONFIG_FIELDS, recursively, with `num_labels` kept."""
    out: dict[str, Any] = {}
    for name, value in model_config.items():
        if name in NON_GRAPH_CONFIG_FIELDS:
            continue
        out[name] = graph_config(value) if isinstance(value, Mapping) else value
    if "id2label" in model_config and "num_labels" not in model_config:
        out["num_labels"] = len(model_config["id2label"] or {})
    return out


def canonical(value: Any, path: str) -> Any:
    """`value` as plain JSON types, or a TypeError naming `path` (no object is ever turned into str)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path} = {value!r} is not a finite number; pass a finite value or a string")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = str(k)
            if name in out:
                raise TypeError(f"{path} has keys that collide as strings ({name!r})")
            out[name] = canonical(v, f"{path}.{name}")
        return out
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [canonical(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{path} has type {type(value).__name__}, which is not JSON. "
        "Convert it first (for example str(torch.bfloat16) -> 'torch.bfloat16', or config.to_dict())."
    )


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def graph_cache_key(
    model_config: Mapping[str, Any],
    shape_fields: Mapping[str, Any],
    role: str,
    bucket: int | None,
    backend: Mapping[str, Any],
    flags: Mapping[str, Any] | Sequence[str],
) -> str:
    """Hex sha256 of the canonical JSON (sorted keys) of every input that can change one compiled graph.

    `flags` keeps its order when it is a list (later compiler flags may override earlier ones).
    """
    if not isinstance(role, str) or not role:
        raise ValueError(f"graph_cache_key: role = {role!r} must be a non-empty string such as 'context_encoding'")
    if bucket is not None and (isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1):
        raise ValueError(f"graph_cache_key: bucket = {bucket!r} must be a positive int, or None for an unbucketed graph")
    missing = [f for f in BACKEND_FIELDS if not backend.get(f)]
    if missing:
        raise ValueError(
            f"graph_cache_key: backend lacks {', '.join(missing)}; it needs {', '.join(BACKEND_FIELDS)} "
            "so that a new compiler, torch or exporter release never reuses an old graph"
        )
    if isinstance(flags, str):
        raise TypeError(f"graph_cache_key: flags = {flags!r} is a string; pass a list (shlex.split(flags)) or a dict")
    document = {
        "key_version": KEY_VERSION,
        "model_config": canonical(graph_config(model_config), "model_config"),
        "shape_fields": canonical(shape_fields, "shape_fields"),
        "role": role,
        "bucket": bucket,
        "backend": canonical(backend, "backend"),
        "flags": canonical(flags, "flags"),
    }
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def check_key(key: str) -> str:
    """Keys become directory and object names: only lowercase hex digests are accepted."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(
            f"compile cache key {key!r} is not a lowercase hex digest of 16-128 characters; "
            "derive it with graph_cache_key(...)"
        )
    return key
