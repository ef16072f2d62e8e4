"""The S3 remote against a real moto server, started by this module on 127.0.0.1 and killed at its end."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cache_helpers import WORKER, Compiler, make_key, neuron_config, never_compile

from neuron_cache.store import CompileCache
from neuron_cache.store.remote_s3 import S3Remote

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, f"moto server exited: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "moto server did not start in 60 s"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """(boto3 client, bucket, cache URL); the environment points boto3 (and worker processes) at moto."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"neuron-cache-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket, f"s3://{bucket}/team/cache"


def _objects(client: Any, bucket: str) -> dict[str, int]:
    return {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_synchronize_uploads_once_and_an_empty_store_pulls(tmp_path: Path, s3: tuple[Any, str, str]) -> None:
    client, bucket, url = s3
    writer = CompileCache(tmp_path / "writer", S3Remote(url))
    keys = [make_key("a"), make_key("b")]
    for i, key in enumerate(keys):
        writer.get_or_compile(key, Compiler(bytes([i]) * 5000), meta={"bucket": 64 * (i + 1)})
    writer.register_export("org/tiny-llama", neuron_config())

    report = writer.synchronize()
    assert sorted(report.uploaded) == sorted(keys) and report.already_remote == 0 and report.registry_uploaded == 1
    objects = _objects(client, bucket)
    for key in keys:
        assert objects[f"team/cache/entries/{key[:2]}/{key}/graph.pt2"] == 5000
        assert f"team/cache/entries/{key[:2]}/{key}/entry.json" in objects
    assert sum(k.startswith("team/cache/registry/org--tiny-llama/") for k in objects) == 1
    assert S3Remote(url).entry_keys() == set(keys)

    again = writer.synchronize()  # idempotent: nothing new goes up
    assert again.uploaded == [] and again.already_remote == 2 and again.registry_uploaded == 0
    assert _objects(client, bucket) == objects

    reader = CompileCache.from_env(url)  # AWS_ENDPOINT_URL points it at moto; its local store is empty
    assert reader.entries() == []
    path = reader.get_or_compile(keys[1], never_compile)
    assert path.read_bytes() == bytes([1]) * 5000
    assert reader.entry(keys[1]).meta == {"bucket": 128}  # type: ignore[union-attr]
    assert reader.get_or_compile(keys[1], never_compile) == path
    assert reader.stats.as_dict() == {"hits": 1, "misses": 1, "compiles": 0, "remote_hits": 1, "evictions": 0}
    assert [c["batch_size"] for c in reader.lookup("org/tiny-llama")] == [1]
    assert reader.lookup("org/tiny-llama", batch_size=8) == []


def test_an_upload_killed_before_the_marker_stays_invisible(tmp_path: Path, s3: tuple[Any, str, str]) -> None:
    client, bucket, url = s3
    key, root = make_key("interrupted"), tmp_path / "writer"
    CompileCache(root).get_or_compile(key, Compiler(b"graph" * 1000))
    proc = subprocess.run([sys.executable, str(WORKER), "s3-die-before-marker", str(root), url], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert set(_objects(client, bucket)) == {f"team/cache/entries/{key[:2]}/{key}/graph.pt2"}  # payload only, no marker

    assert S3Remote(url).entry_keys() == set()
    reader, compiler = CompileCache(tmp_path / "reader", S3Remote(url)), Compiler(b"graph" * 1000)
    reader.get_or_compile(key, compiler)
    assert compiler.calls == 1 and reader.stats.remote_hits == 0

    report = CompileCache(root, S3Remote(url)).synchronize()  # the next synchronize completes the entry
    assert report.uploaded == [key]
    assert S3Remote(url).entry_keys() == {key}


def test_a_corrupt_remote_entry_is_not_used(tmp_path: Path, s3: tuple[Any, str, str], caplog: pytest.LogCaptureFixture) -> None:
    client, bucket, url = s3
    key = make_key("bad-remote")
    CompileCache(tmp_path / "writer", S3Remote(url)).get_or_compile(key, Compiler(b"right" * 100))
    CompileCache(tmp_path / "writer", S3Remote(url)).synchronize()
    client.put_object(Bucket=bucket, Key=f"team/cache/entries/{key[:2]}/{key}/graph.pt2", Body=b"wrong" * 100)

    reader, compiler = CompileCache(tmp_path / "reader", S3Remote(url)), Compiler(b"right" * 100)
    with caplog.at_level(logging.WARNING, logger="neuron_cache"):
        assert reader.get_or_compile(key, compiler).read_bytes() == b"right" * 100
    assert compiler.calls == 1 and reader.stats.remote_hits == 0
    assert any(key in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
    assert list((tmp_path / "reader" / "tmp").iterdir()) == []
