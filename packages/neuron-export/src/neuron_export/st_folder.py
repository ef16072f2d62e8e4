"""Read a sentence-transformers folder (`modules.json`) without sentence-transformers: what it pools, whether it
normalizes, and where its transformer checkpoint is.

The folder is user input: files are size-bounded, JSON is checked field by field, and every module path must stay
inside the folder. Only the pipelines an artifact reproduces exactly are accepted (Transformer -> Pooling with one
mode -> optional Normalize); any other module (Dense, LayerNorm, WeightedLayerPooling, ...) is refused by name rather
than dropped, since dropping it would change every embedding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuron_export.errors import CheckpointError, UnsupportedArchitectureError

MODULES_FILE = "modules.json"
_MAX_JSON_BYTES = 1 << 20
# sentence-transformers' pooling_mode_* flags -> our (neuron_cache.config.POOLING_MODES) mode names
_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_lasttoken": "last_token"}
_UNSUPPORTED_FLAGS = ("pooling_mode_weightedmean_tokens",)
# sentence-transformers >= 6 saves one `pooling_mode` string instead of the flags
_POOLING_NAMES = {"cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "lasttoken": "last_token"}


@dataclass(kw_only=True, slots=True)
class SentenceTransformerInfo:
    checkpoint_dir: Path  # the Transformer module's folder (the root for most models)
    pooling: str  # one of neuron_cache.config.POOLING_MODES
    normalize: bool
    max_seq_length: int | None  # sentence_bert_config.json: what sentence-transformers truncates to


def is_sentence_transformers_dir(directory: Path) -> bool:
    return (directory / MODULES_FILE).is_file()


def read_sentence_transformers(directory: Path) -> SentenceTransformerInfo:
    modules = _json(directory / MODULES_FILE)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{directory / MODULES_FILE}: expected a list of module objects; repair the file")
    kinds = [(str(m.get("type", "")), str(m.get("path", ""))) for m in modules]
    names = [k.rsplit(".", 1)[-1] for k, _ in kinds]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise UnsupportedArchitectureError(
            f"{directory / MODULES_FILE} chains the modules {names}; neuron-export reproduces Transformer -> Pooling "
            "(-> Normalize) exactly and nothing else (a Dense or other module would be dropped, changing every "
            "embedding). Export the transformer alone with --task feature-extraction --pooling <mode> instead")
    checkpoint_dir = _inside(directory, kinds[0][1])
    pooling_config = _json(_inside(directory, kinds[1][1]) / "config.json")
    if not isinstance(pooling_config, dict):
        raise CheckpointError(f"{directory / kinds[1][1]}/config.json: expected an object; repair the file")
    unsupported = [f for f in _UNSUPPORTED_FLAGS if pooling_config.get(f)]
    modes = [mode for flag, mode in _POOLING_FLAGS.items() if pooling_config.get(flag)]
    named = pooling_config.get("pooling_mode")
    for name in [named] if isinstance(named, str) else named if isinstance(named, list) else []:
        (modes if name in _POOLING_NAMES else unsupported).append(_POOLING_NAMES.get(name, str(name)))
    if pooling_config.get("include_prompt") is False:  # instruction models pool without their prompt tokens
        unsupported.append("include_prompt: false")
    if unsupported or len(modes) != 1:
        raise UnsupportedArchitectureError(
            f"{directory / kinds[1][1]}/config.json turns on pooling {unsupported + modes or 'none'}; neuron-export "
            f"exports exactly one of {sorted(_POOLING_FLAGS)}")
    bert_config = directory / "sentence_bert_config.json"
    max_seq = _json(bert_config).get("max_seq_length") if bert_config.is_file() else None
    if max_seq is not None and (not isinstance(max_seq, int) or isinstance(max_seq, bool) or max_seq < 1):
        raise CheckpointError(f"{bert_config}: max_seq_length = {max_seq!r} is not a positive integer; repair it")
    return SentenceTransformerInfo(checkpoint_dir=checkpoint_dir, pooling=modes[0], normalize=len(names) == 3,
                                   max_seq_length=max_seq)


def _inside(root: Path, rel: str) -> Path:
    """`root / rel`, refusing a module path that leaves the folder (an absolute path, '..', a symlink out)."""
    path = (root / rel).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise CheckpointError(f"{root / MODULES_FILE} names the module path {rel!r}, which leaves {root}; refusing it")
    if not path.is_dir():
        raise CheckpointError(f"{root / MODULES_FILE} names the module path {rel!r}, which is not a folder in {root}")
    return path


def _json(path: Path) -> Any:
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is larger than {_MAX_JSON_BYTES} bytes; not a sentence-transformers config")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path} ({err}); repair the file") from None
