"""Concurrency and crash safety of the local store, with real processes (tests/cache/_worker.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cache_helpers import WORKER, Compiler, make_key

from neuron_cache.store import CompileCache


def test_two_processes_racing_on_a_key_compile_once_and_get_the_same_bytes(tmp_path: Path) -> None:
    key, count, go = make_key("race"), tmp_path / "compiles.txt", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "race", str(tmp_path / "store"), key, str(count), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:  # both have imported the cache and wait at the start line
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()
        outs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert len(count.read_text().splitlines()) == 1, "the graph was compiled more than once"
    assert results[0]["sha256"] == results[1]["sha256"]
    assert sorted(r["stats"]["compiles"] for r in results) == [0, 1]
    assert sorted(r["stats"]["hits"] for r in results) == [0, 1]


def test_threads_racing_on_a_key_compile_once(tmp_path: Path) -> None:
    cache, key, compiler, started = CompileCache(tmp_path), make_key("threads"), Compiler(), threading.Barrier(4)

    def slow(out: Path) -> None:
        time.sleep(0.2)
        compiler(out)

    results: list[bytes] = []

    def run() -> None:
        started.wait()
        results.append(cache.get_or_compile(key, slow).read_bytes())

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert compiler.calls == 1 and len(results) == 4 and len(set(results)) == 1


def test_sigkill_mid_write_leaves_no_entry_and_the_next_call_compiles(tmp_path: Path) -> None:
    root, key, ready = tmp_path / "store", make_key("killed"), tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, str(WORKER), "hang-mid-write", str(root), key, str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "worker never started writing"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
    cache = CompileCache(root)
    assert cache.entry(key) is None and cache.entries() == []
    assert [p.name.split(".")[0] for p in (root / "tmp").iterdir()] == [key]  # only invisible staging is left
    path = cache.get_or_compile(key, Compiler(b"whole graph"))
    assert path.read_bytes() == b"whole graph" and cache.stats.compiles == 1 and cache.stats.evictions == 0
    assert list((root / "tmp").iterdir()) == []  # the dead process's staging was swept


def test_sigkill_just_before_the_rename_leaves_no_entry(tmp_path: Path) -> None:
    root, key = tmp_path / "store", make_key("killed-late")
    proc = subprocess.run([sys.executable, str(WORKER), "die-before-publish", str(root), key], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    staged = list((root / "tmp").iterdir())
    assert len(staged) == 1 and (staged[0] / "entry.json").is_file()  # complete, but never renamed in
    cache = CompileCache(root)
    assert cache.entry(key) is None
    assert cache.get_or_compile(key, Compiler(b"graph")).read_bytes() == b"graph"
    assert cache.stats.compiles == 1

