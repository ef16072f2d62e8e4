"""The `neuron-cache` CLI: click's CliRunner for the commands, one real subprocess for the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
from cache_helpers import Compiler, make_key, neuron_config
from click.testing import CliRunner, Result
from fake_hub import FakeHub

from neuron_cache.cli import EXIT_NOT_FOUND, cli, parse_age, parse_size
from neuron_cache.store import CompileCache

SCRIPT = Path(sys.executable).parent / "neuron-cache"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_units() -> None:
    assert parse_size("10G") == 10 << 30 and parse_size("512MiB") == 512 << 20 and parse_size("1.5k") == 1536
    assert parse_size("2048") == 2048 and parse_size("1TB") == 1 << 40
    assert parse_age("7d") == 7 * 86400 and parse_age("1d12h") == 36 * 3600 and parse_age("90") == 90
    assert parse_age("2w") == 14 * 86400 and parse_age("30m") == 1800
    for bad in ("10Q", "G", "-1G", ""):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)
    for bad in ("7x", "d7", "1d 2h", ""):
        with pytest.raises(ValueError, match="age"):
            parse_age(bad)


@pytest.mark.parametrize("args", [["--help"], ["lookup", "org/nothing-here"]])
def test_console_script_imports_no_torch(args: list[str], isolated_env: Path) -> None:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: pip install -e packages/neuron-cache --no-deps"
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "neuron_cache.cli" in imported  # control: the profile did record the imports
    heavy = sorted(m for m in imported if m.split(".")[0] in {"torch", "transformers", "boto3"})
    assert heavy == [], f"`neuron-cache {' '.join(args)}` imported {heavy}"
    if args == ["--help"]:
        assert proc.returncode == 0 and "synchronize" in proc.stdout and "Exit codes" in proc.stdout
    else:
        assert proc.returncode == EXIT_NOT_FOUND and "no compiled configuration of org/nothing-here" in proc.stderr


def test_set_and_status(isolated_env: Path) -> None:
    result = run("set", "hf://org/team-cache")
    assert result.exit_code == 0
    config = isolated_env / "neuron" / "cache_config.json"
    assert json.loads(config.read_text()) == {"default_remote": "hf://org/team-cache"}
    status = run("status")
    assert status.exit_code == 0
    assert f"hf://org/team-cache (from {config})" in status.output
    assert f"local store  {isolated_env / 'neuron' / 'compile'} (0 entries, 0 B)" in status.output
    assert run("set", "--clear").exit_code == 0 and "remote       none" in run("status").output
    assert run("set").exit_code == 2
    bad = run("set", "gs://bucket")
    assert bad.exit_code == 1 and "allowed remotes" in bad.output


def test_lookup_table_matches_the_registry(tmp_path: Path) -> None:
    cache = CompileCache.from_env()
    cache.register_export("org/tiny-llama", neuron_config())
    cache.register_export("org/tiny-llama", neuron_config(batch_size=4, max_batch_size=4, tensor_parallel_size=2))
    result = run("lookup", "org/tiny-llama")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "2 compiled configuration(s) of org/tiny-llama:"
    assert lines[1].split() == ["task", "batch", "seq_len", "tp", "dtype", "target", "compiler", "buckets"]
    assert [line.split() for line in lines[3:]] == [
        ["text-generation", "1", "256", "1", "bfloat16", "cpu", "2.13.0", "64,128"],
        ["text-generation", "4", "256", "2", "bfloat16", "cpu", "2.13.0", "64,128"],
    ]
    one = run("lookup", "org/tiny-llama", "--batch_size", "4", "--tensor-parallel-size", "2", "--target", "cpu")
    assert one.exit_code == 0 and len(one.output.splitlines()) == 4
    none = run("lookup", "org/tiny-llama", "--target", "trn2")
    assert none.exit_code == EXIT_NOT_FOUND and "with target=trn2" in none.output
    assert run("lookup", "org/tiny-llama", "--batch_size", "four").exit_code == 2


def test_cleanup_dry_run_older_than_and_max_size(tmp_path: Path) -> None:
    cache = CompileCache.from_env()
    keys = [make_key(f"entry-{i}") for i in range(3)]
    for i, key in enumerate(keys):
        cache.get_or_compile(key, Compiler(b"x" * 4000))
        cache.local.touch(key, time.time() - 86400 * (10 - i))  # 10, 9 and 8 days ago

    dry = run("cleanup", "--dry-run", "--max-size", "1K")
    assert dry.exit_code == 0 and dry.output.startswith("would remove 3 entries")
    assert len(cache.entries()) == 3
    listed = run("status", "--entries").output
    assert all(k[:16] in listed for k in keys) and "3 entries" in listed

    older = run("cleanup", "--older-than", "8d12h")
    assert older.exit_code == 0 and older.output.startswith("removed 2 entries")
    assert keys[0][:16] in older.output and keys[1][:16] in older.output
    assert [e.key for e in cache.entries()] == [keys[2]]
    assert run("cleanup", "--older-than", "7x").exit_code == 2
    assert run("cleanup", "--max-size", "0").output.startswith("removed 1 entries")


def test_synchronize_without_a_remote_is_an_error() -> None:
    result = run("synchronize")
    assert result.exit_code == 1 and "no remote to synchronize with" in result.output


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    fake = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    yield fake
    fake.close()


def test_create_then_synchronize_to_the_hub(hub: FakeHub) -> None:
    created = run("create", "org/cli-cache")
    assert created.exit_code == 0, created.output
    assert "default remote: hf://org/cli-cache" in created.output and "org/cli-cache" in hub.repos
    cache = CompileCache.from_env()
    cache.get_or_compile(make_key("g"), Compiler(b"graph"))
    cache.register_export("org/tiny-llama", neuron_config())
    synced = run("synchronize")
    assert synced.exit_code == 0, synced.output
    assert "hf://org/cli-cache: uploaded 1 entries (0 already there) and 1 registry files" in synced.output
    assert "remote entries  1" in run("status", "--remote").output
    assert "unknown" not in hub.routes()


def test_offline_create_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run("create", "org/cli-cache")
    assert result.exit_code == 1 and "HF_HUB_OFFLINE" in result.output


# ---- a remote that cannot be reached is an error, never "0 entries" ------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dead_s3(monkeypatch: pytest.MonkeyPatch) -> str:
    """An S3 endpoint on a closed localhost port (botocore gives up after its retries, ~3 s)."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    return "s3://bucket/prefix"


def test_status_remote_offline_says_it_did_not_reach_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run("--url", "hf://org/team-cache", "status", "--remote")
    assert result.exit_code == 1, result.output
    assert "remote entries" not in result.output  # the old "remote entries  0"
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "could not reach the remote hf://org/team-cache" in error[0]
    assert "HF_HUB_OFFLINE" in error[0]
    assert "local store" in result.output  # what could be shown locally still is


def test_status_remote_and_lookup_with_an_unreachable_s3_endpoint(dead_s3: str) -> None:
    CompileCache.from_env(dead_s3).register_export("org/tiny-llama", neuron_config())

    status = run("--url", dead_s3, "status", "--remote")
    assert status.exit_code == 1 and "remote entries" not in status.output
    assert f"Error: could not reach the remote {dead_s3}" in status.output and "AWS_ENDPOINT_URL" in status.output

    lookup = run("--url", dead_s3, "lookup", "org/tiny-llama")
    assert lookup.exit_code == 1, lookup.output  # not 0: the answer lacks the remote's configurations
    assert "1 compiled configuration(s) of org/tiny-llama" in lookup.output  # the local registry still shows
    assert f"could not reach the remote {dead_s3}" in lookup.output and "local registry only" in lookup.output

    missing = run("--url", dead_s3, "lookup", "org/other")
    assert missing.exit_code == 1 and "no compiled configuration" not in missing.output  # not "found nothing" (3)
