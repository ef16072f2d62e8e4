"""The Hugging Face Hub remote against a local fake Hub (fake_hub.py: http.server in a thread on 127.0.0.1).

Endpoints huggingface_hub 2.4 calls for these operations, which the fake answers (read from
huggingface_hub/hf_api.py, _commit_api.py and file_download.py):

    POST /api/repos/create                              HfApi.create_repo (409 = exists, exist_ok)
    GET  /api/models/{org}/{repo}/revision/{rev}        HfApi.repo_info -> head sha for parent_commit
    GET  /api/models/{org}/{repo}/tree/{rev}[/{path}]   HfApi.list_repo_tree (?recursive=True; 404
                                                        X-Error-Code: EntryNotFound for a missing path)
    HEAD /{org}/{repo}/resolve/{rev}/{path}             hf_hub_download metadata (X-Repo-Commit, ETag,
                                                        Content-Length; 404 EntryNotFound = a miss)
    GET  /{org}/{repo}/resolve/{rev}/{path}             hf_hub_download content
    POST /api/models/{org}/{repo}/preupload/{rev}       create_commit: upload mode per file ("regular")
    POST /api/models/{org}/{repo}/commit/{rev}          create_commit: NDJSON header (parentCommit) and
                                                        base64 files; 412 when parentCommit is not the head

huggingface_hub is pointed at the fake with the `endpoint` argument (HubRemote) or HF_ENDPOINT (CLI).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
from cache_helpers import Compiler, make_key, neuron_config, never_compile
from fake_hub import FakeHub

from neuron_cache.store import CompileCache, RemoteError, RetryPolicy
from neuron_cache.store.remote_hub import HubRemote

FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
REPO = "org/neuron-cache"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fake Hub with an empty repo org/neuron-cache, and huggingface_hub online."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    fake = FakeHub()
    remote(fake).create_repo()
    fake.requests.clear()
    yield fake
    fake.close()


def remote(hub: FakeHub, repo: str = REPO) -> HubRemote:
    return HubRemote(f"hf://{repo}", endpoint=hub.url, token=False, retry=FAST)


def _writer(tmp_path: Path, hub: FakeHub) -> tuple[CompileCache, list[str]]:
    cache = CompileCache(tmp_path / "writer", remote(hub))
    keys = [make_key("ctx-64"), make_key("tkg")]
    for i, key in enumerate(keys):
        cache.get_or_compile(key, Compiler(bytes([65 + i]) * 3000))
    cache.register_export("org/tiny-llama", neuron_config())
    hub.requests.clear()  # the compiles above asked the hub first (HEAD 404)
    return cache, keys


def test_create_repo_is_idempotent(hub: FakeHub) -> None:
    assert remote(hub, "org/new-cache").create_repo().endswith("org/new-cache")
    remote(hub, "org/new-cache").create_repo()  # exists: 409, accepted
    assert hub.requests == [("POST", "create_repo", 200), ("POST", "create_repo", 409)]


def test_synchronize_retries_a_412_conflict_then_commits_once(tmp_path: Path, hub: FakeHub) -> None:
    writer, keys = _writer(tmp_path, hub)
    other = make_key("from another machine")

    def concurrent_commit(fake: FakeHub, repo: str) -> None:  # another machine commits first
        fake.repos[repo].commit({f"entries/{other[:2]}/{other}/graph.pt2": b"x", f"entries/{other[:2]}/{other}/entry.json": b"{}"})

    hub.before_commit.append(concurrent_commit)
    report = writer.synchronize()
    assert sorted(report.uploaded) == sorted(keys) and report.registry_uploaded == 1
    commits = [status for _, route, status in hub.requests if route == "commit"]
    assert commits == [412, 200]
    assert hub.routes() == ["repo_info", "tree", "preupload", "commit"] * 2
    files = hub.repos[REPO].snapshot("main")
    assert files is not None
    for key in keys:
        assert files[f"entries/{key[:2]}/{key}/graph.pt2"] == writer.entry(key).file_path.read_bytes()  # type: ignore[union-attr]
        assert f"entries/{key[:2]}/{key}/entry.json" in files
    assert f"entries/{other[:2]}/{other}/entry.json" in files  # the concurrent commit survived
    assert sum(p.startswith("registry/org--tiny-llama/") for p in files) == 1

    hub.requests.clear()
    again = writer.synchronize()  # idempotent: lists, finds everything, commits nothing
    assert again.uploaded == [] and again.already_remote == 2 and hub.routes() == ["repo_info", "tree"]


def test_synchronize_retries_429_and_5xx_but_not_403(tmp_path: Path, hub: FakeHub) -> None:
    writer, keys = _writer(tmp_path, hub)
    hub.before_commit += [lambda fake, repo: 503, lambda fake, repo: 429]
    assert sorted(writer.synchronize().uploaded) == sorted(keys)
    assert [s for _, r, s in hub.requests if r == "commit"] == [503, 429, 200]

    writer.get_or_compile(make_key("third"), Compiler(b"3"))
    hub.requests.clear()
    hub.before_commit.append(lambda fake, repo: 403)
    with pytest.raises(RemoteError, match="403"):
        writer.synchronize()
    assert [s for _, r, s in hub.requests if r == "commit"] == [403]


def test_an_empty_store_pulls_entries_and_registry_from_the_hub(tmp_path: Path, hub: FakeHub) -> None:
    writer, keys = _writer(tmp_path, hub)
    writer.synchronize()
    hub.requests.clear()

    reader = CompileCache(tmp_path / "reader", remote(hub))
    path = reader.get_or_compile(keys[0], never_compile)
    assert path.read_bytes() == bytes([65]) * 3000
    assert reader.stats.remote_hits == 1 and reader.stats.compiles == 0
    assert [(m, r) for m, r, _ in hub.requests] == [("HEAD", "resolve"), ("GET", "resolve")] * 2
    assert list((tmp_path / "reader" / "tmp").iterdir()) == []

    compiler = Compiler(b"new")
    reader.get_or_compile(make_key("not on the hub"), compiler)  # HEAD 404: a miss, compiled locally
    assert compiler.calls == 1 and hub.requests[-1] == ("HEAD", "resolve", 404)

    found = reader.lookup("org/tiny-llama", sequence_length=256)
    assert [c["checkpoint_id"] for c in found] == ["org/tiny-llama"]
    assert reader.lookup("org/unknown-model") == []  # tree 404 for its folder: nothing registered
    assert "unknown" not in hub.routes()


def test_offline_mode_uses_the_warm_local_store_and_never_the_network(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    writer, keys = _writer(tmp_path, hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    cache = CompileCache.from_env(f"hf://{REPO}", endpoint=hub.url)
    cache.local = writer.local  # the same warm local store
    cache.registry = writer.registry
    with caplog.at_level(logging.WARNING, logger="neuron_cache"):
        assert cache.get_or_compile(keys[0], never_compile).read_bytes() == bytes([65]) * 3000
        cache.get_or_compile(make_key("cold-1"), Compiler(b"1"))
        cache.get_or_compile(make_key("cold-2"), Compiler(b"2"))
        assert [c["batch_size"] for c in cache.lookup("org/tiny-llama")] == [1]
        with pytest.raises(RemoteError, match="HF_HUB_OFFLINE"):
            cache.synchronize()
    assert cache.stats.as_dict() == {"hits": 1, "misses": 2, "compiles": 2, "remote_hits": 0, "evictions": 0}
    offline_lines = [r.getMessage() for r in caplog.records if "HF_HUB_OFFLINE" in r.getMessage()]
    assert len(offline_lines) == 1 and f"hf://{REPO}" in offline_lines[0]  # said once, clearly
    assert hub.requests == []


def test_a_missing_repo_is_reported_with_the_fix(tmp_path: Path, hub: FakeHub) -> None:
    cache = CompileCache(tmp_path, remote(hub, "org/does-not-exist"))
    cache.get_or_compile(make_key("a"), Compiler(b"a"))  # reading from a missing repo degrades to compiling
    with pytest.raises(RemoteError, match="neuron-cache create org/does-not-exist"):
        cache.synchronize()
