"""The local compile cache: keys, get_or_compile, verification and eviction, LRU cleanup, registry, settings."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cache_helpers import Compiler, make_key, neuron_config, never_compile

from neuron_cache.store import (
    NON_GRAPH_CONFIG_FIELDS,
    CacheError,
    CompileCache,
    CorruptEntryWarning,
    graph_cache_key,
    why_not_in_graph,
)
from neuron_cache.store.entry import MANIFEST
from neuron_cache.store.settings import resolve_location, write_default_remote

# ---- keys ------------------------------------------------------------------------------------------

MODEL = {
    "_name_or_path": "org/llama-finetune", "transformers_version": "5.19.0", "dtype": "float32",
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "bos_token_id": 1, "eos_token_id": 2,
    "pad_token_id": None, "tie_word_embeddings": False, "use_cache": True, "output_hidden_states": False,
    "id2label": {0: "LABEL_0", 1: "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "text_config": {"hidden_size": 32, "_name_or_path": "nested"},
}
SHAPES = {"batch_size": 1, "sequence_length": 256, "context_buckets": [64, 128], "tensor_parallel_size": 1,
          "torch_dtype": "bfloat16", "on_device_sampling": False, "max_topk": 256}
BACKEND = {"name": "torch-aot", "compiler_version": "2.13.0", "torch_version": "2.13.0", "package_version": "0.1.0"}
FLAGS = ["--auto-cast=none", "-O2"]


def key_of(model: dict[str, Any] = MODEL, shapes: dict[str, Any] = SHAPES, role: str = "context_encoding",
           bucket: int | None = 64, backend: dict[str, Any] = BACKEND, flags: Any = FLAGS) -> str:
    return graph_cache_key(model, shapes, role, bucket, backend, flags)


def test_key_is_a_stable_sha256_of_the_inputs() -> None:
    key = key_of()
    assert len(key) == 64 and int(key, 16) >= 0
    assert key_of(model=dict(reversed(MODEL.items()))) == key  # dict order does not matter
    assert key_of() == key


@pytest.mark.parametrize(
    "change",
    [
        {"_name_or_path": "someone/else"}, {"transformers_version": "5.20.0"}, {"dtype": "bfloat16"},
        {"torch_dtype": "float16"}, {"bos_token_id": 7}, {"eos_token_id": [2, 3]}, {"use_cache": False},
        {"output_hidden_states": True}, {"output_attentions": True}, {"initializer_range": 0.5},
        {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}},  # renamed labels, same count
        {"text_config": {"hidden_size": 32, "_name_or_path": "other nested"}},
    ],
)
def test_key_ignores_non_graph_fields(change: dict[str, Any]) -> None:
    assert set(change) <= NON_GRAPH_CONFIG_FIELDS | {"text_config"}
    assert key_of(model={**MODEL, **change}) == key_of()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": {**MODEL, "hidden_size": 128}},
        {"model": {**MODEL, "text_config": {"hidden_size": 48}}},
        {"model": {**MODEL, "tie_word_embeddings": True}},
        {"model": {**MODEL, "pad_token_id": 0}},
        {"model": {**MODEL, "architectures": ["LlamaForSequenceClassification"]}},
        {"model": {**MODEL, "id2label": {0: "a", 1: "b", 2: "c"}}},  # a 3-way head is another graph
        {"bucket": 128},
        {"bucket": None, "role": "token_generation"},
        {"shapes": {**SHAPES, "batch_size": 4}},
        {"shapes": {**SHAPES, "torch_dtype": "float32"}},
        {"backend": {**BACKEND, "torch_version": "2.14.0"}},
        {"backend": {**BACKEND, "compiler_version": "2.27.0"}},
        {"backend": {**BACKEND, "package_version": "0.2.0"}},
        {"flags": [*FLAGS, "--enable-fast-math"]},
        {"flags": list(reversed(FLAGS))},  # a later flag may override an earlier one
    ],
)
def test_key_changes_with_every_graph_input(kwargs: dict[str, Any]) -> None:
    assert key_of(**kwargs) != key_of()


def test_every_dropped_field_has_a_reason_and_the_kept_ones_are_kept() -> None:
    assert all(why_not_in_graph(f) for f in NON_GRAPH_CONFIG_FIELDS)
    for kept in ("tie_word_embeddings", "pad_token_id", "architectures", "hidden_size"):
        assert kept not in NON_GRAPH_CONFIG_FIELDS


def test_key_rejects_inputs_it_cannot_hash_faithfully() -> None:
    with pytest.raises(TypeError, match=r"model_config\.weird has type object"):
        key_of(model={**MODEL, "weird": object()})
    with pytest.raises(ValueError, match="backend lacks torch_version"):
        key_of(backend={k: v for k, v in BACKEND.items() if k != "torch_version"})
    with pytest.raises(TypeError, match=r"shlex\.split"):
        key_of(flags="--auto-cast=none -O2")
    with pytest.raises(ValueError, match="bucket"):
        key_of(bucket=0)


# ---- get_or_compile ---------------------------------------------------------------------------------


def test_miss_compiles_once_then_hits(tmp_path: Path) -> None:
    cache, compile_fn, key = CompileCache(tmp_path / "store"), Compiler(), make_key("a")
    first = cache.get_or_compile(key, compile_fn, meta={"inputs": [[1, 64]]})
    second = cache.get_or_compile(key, compile_fn)
    assert first == second and first.read_bytes() == b"graph #1\n" * 100
    assert compile_fn.calls == 1
    assert cache.stats.as_dict() == {"hits": 1, "misses": 1, "compiles": 1, "remote_hits": 0, "evictions": 0}
    entry = cache.entry(key)
    assert entry is not None and entry.meta == {"inputs": [[1, 64]]} and entry.file == "graph.pt2"
    assert list((tmp_path / "store" / "tmp").iterdir()) == []  # no staging left behind


def test_a_fresh_cache_object_reuses_the_store(tmp_path: Path) -> None:
    CompileCache(tmp_path).get_or_compile(make_key("a"), Compiler(b"bytes"), filename="model.neff")
    path = CompileCache(tmp_path).get_or_compile(make_key("a"), never_compile, filename="model.neff")
    assert path.name == "model.neff" and path.read_bytes() == b"bytes"


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop_payload", "drop_manifest", "garble_manifest"])
def test_corrupt_or_partial_entry_is_evicted_with_a_warning_and_rebuilt(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache, key = CompileCache(tmp_path), make_key("corrupt")
    path = cache.get_or_compile(key, Compiler(b"good graph" * 100))
    if damage == "flip":
        path.write_bytes(b"GOOD graph" + path.read_bytes()[10:])  # same size, other bytes
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:50])
    elif damage == "drop_payload":
        path.unlink()
    elif damage == "drop_manifest":
        (path.parent / MANIFEST).unlink()
    else:
        (path.parent / MANIFEST).write_text("{not json")
    with pytest.warns(CorruptEntryWarning, match=key) as warned, caplog.at_level(logging.WARNING):
        rebuilt = cache.get_or_compile(key, Compiler(b"good graph" * 100))
    assert rebuilt.read_bytes() == b"good graph" * 100
    assert str(path.parent) in str(warned[0].message)
    assert any(key in r.getMessage() and "evicting" in r.getMessage() for r in caplog.records)
    assert cache.stats.evictions == 1 and cache.stats.compiles == 2


def test_failed_compile_leaves_nothing(tmp_path: Path) -> None:
    cache, key = CompileCache(tmp_path), make_key("fails")

    def broken(out: Path) -> None:
        out.write_bytes(b"partial")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="compiler crashed"):
        cache.get_or_compile(key, broken)
    with pytest.raises(CacheError, match="did not write"):
        cache.get_or_compile(key, lambda out: None)
    assert cache.entry(key) is None and cache.entries() == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_compile_fn_extra_files_are_not_kept(tmp_path: Path) -> None:
    def noisy(out: Path) -> None:
        out.write_bytes(b"graph")
        (out.parent / "compiler.log").write_text("log")

    path = CompileCache(tmp_path).get_or_compile(make_key("noisy"), noisy)
    assert sorted(p.name for p in path.parent.iterdir()) == [MANIFEST, "graph.pt2"]


def test_bad_keys_and_filenames_are_refused(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path)
    for key in ("../../etc", "ABCDEF0123456789", "short"):
        with pytest.raises(ValueError, match="hex digest"):
            cache.get_or_compile(key, never_compile)
    for name in ("../x", "a/b", MANIFEST, ""):
        with pytest.raises(ValueError, match="plain file name"):
            cache.get_or_compile(make_key("k"), never_compile, filename=name)


def test_disabled_cache_compiles_every_time_into_a_temp_dir(tmp_path: Path) -> None:
    cache, compile_fn = CompileCache(tmp_path / "store", enabled=False), Compiler()
    first = cache.get_or_compile(make_key("a"), compile_fn)
    second = cache.get_or_compile(make_key("a"), compile_fn)
    assert compile_fn.calls == 2 and first != second and first.is_file() and second.is_file()
    assert not (tmp_path / "store").exists()
    assert cache.register_export("org/m", neuron_config()) is None


# ---- cleanup -----------------------------------------------------------------------------------------


def _fill(cache: CompileCache, names: list[str], size: int = 1000) -> dict[str, str]:
    keys = {name: make_key(name) for name in names}
    for i, name in enumerate(names):
        cache.get_or_compile(keys[name], Compiler(bytes([i]) * size))
        cache.local.touch(keys[name], time.time() - 1000 * (len(names) - i))  # older first
    return keys


def test_cleanup_by_size_keeps_the_most_recently_used(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path)
    keys = _fill(cache, ["a", "b", "c", "d"])
    cache.get_or_compile(keys["a"], never_compile)  # a, the oldest, is now the most recently used
    budget = sum(cache.entry(keys[k]).size for k in "ad")  # type: ignore[union-attr]
    removed = cache.cleanup(max_size_bytes=budget)
    assert [e.key for e in removed] == [keys["b"], keys["c"]]  # least recently used first
    assert {e.key for e in cache.entries()} == {keys["a"], keys["d"]}


def test_cleanup_older_than_and_dry_run(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path)
    keys = _fill(cache, ["a", "b", "c"])  # last accesses: 3000 s, 2000 s and 1000 s ago
    would = cache.cleanup(older_than_seconds=1500, dry_run=True)
    assert [e.key for e in would] == [keys["a"], keys["b"]]
    assert len(cache.entries()) == 3  # a dry run removes nothing
    removed = cache.cleanup(older_than_seconds=1500)
    assert [e.key for e in removed] == [keys["a"], keys["b"]]
    assert [e.key for e in cache.entries()] == [keys["c"]]
    assert cache.cleanup() == []


def test_cleanup_skips_an_entry_in_use_and_sweeps_stale_staging(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path)
    keys = _fill(cache, ["a", "b"])
    stale = cache.local.staging(make_key("killed"))
    with cache.local.lock(keys["a"]):
        removed = cache.cleanup(max_size_bytes=0)
    assert [e.key for e in removed] == [keys["b"]]
    assert [e.key for e in cache.entries()] == [keys["a"]]
    assert not stale.exists()


# ---- registry ----------------------------------------------------------------------------------------


def test_register_and_lookup(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path)
    cache.register_export("org/tiny-llama", neuron_config())
    cache.register_export("org/tiny-llama", neuron_config(batch_size=4, max_batch_size=4))
    cache.register_export("org/tiny-llama", neuron_config())  # the same export again: no new record
    cache.register_export("org/other", neuron_config(sequence_length=512))
    found = cache.lookup("org/tiny-llama")
    assert [c["batch_size"] for c in found] == [1, 4]
    assert "weights" not in found[0] and found[0]["graphs"]["token_generation"]["role"] == "token_generation"
    assert [c["batch_size"] for c in cache.lookup("org/tiny-llama", batch_size=4, torch_dtype="bfloat16")] == [4]
    assert cache.lookup("org/tiny-llama", target="cpu", sequence_length=256, tensor_parallel_size=None) == found
    assert cache.lookup("org/tiny-llama", target="trn2") == []
    assert cache.lookup("org/missing") == []
    assert cache.registry.models() == ["org/other", "org/tiny-llama"]
    with pytest.raises(ValueError, match="batchsize"):
        cache.lookup("org/tiny-llama", batchsize=4)


# ---- settings ----------------------------------------------------------------------------------------


def test_location_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> None:
    default = resolve_location()
    assert default.root == isolated_env / "neuron" / "compile" and default.remote_url is None
    assert resolve_location(str(tmp_path / "p")).root == tmp_path / "p"
    assert resolve_location(f"file://{tmp_path}/q").root == tmp_path / "q"
    write_default_remote("hf://org/cache")
    assert json.loads((isolated_env / "neuron" / "cache_config.json").read_text()) == {"default_remote": "hf://org/cache"}
    assert resolve_location().remote_url == "hf://org/cache"
    monkeypatch.setenv("NEURON_COMPILE_CACHE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("NEURON_COMPILE_CACHE_DIR", str(tmp_path / "local"))
    env = resolve_location()
    assert (env.remote_url, env.root, env.source) == ("s3://bucket/prefix", tmp_path / "local", "NEURON_COMPILE_CACHE_URL")
    assert resolve_location("hf://a/b").remote_url == "hf://a/b"  # the argument wins
    cache = CompileCache.from_env()
    assert cache.root == tmp_path / "local" and type(cache.remote).__name__ == "S3Remote"
    for bad in ("gs://bucket", "hf://no-org", "s3://"):
        with pytest.raises(CacheError, match="compile cache URL"):
            resolve_location(bad)


def test_store_never_imports_a_remote_client_until_used(tmp_path: Path) -> None:
    code = (
        "import sys; from neuron_cache.store import CompileCache; c = CompileCache(sys.argv[1]);"
        "c.get_or_compile('ab' * 32, lambda p: p.write_bytes(b'x'));"
        "print(sorted(m for m in ('torch', 'boto3', 'huggingface_hub') if m in sys.modules))"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert os.path.isdir(tmp_path / "entries")
