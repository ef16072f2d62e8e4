"""Child processes of the compile-cache tests (run as `python _worker.py MODE ARGS...`).

Modes:
  race ROOT KEY COUNT_FILE GO_FILE     print "ready", wait for GO_FILE, get_or_compile (compile_fn
                                       appends a line to COUNT_FILE and takes 0.4 s); print JSON
  hang-mid-write ROOT KEY READY_FILE   compile_fn writes half a graph, creates READY_FILE, then hangs
                                       (the test SIGKILLs it)
  die-before-publish ROOT KEY          compile_fn completes, the process SIGKILLs itself just before
                                       the staging directory is renamed into place
  s3-die-before-marker ROOT URL        synchronize to S3, SIGKILL itself after the payload upload,
                                       before the manifest (the marker) is written
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from neuron_cache.store import CompileCache
from neuron_cache.store.local import LocalStore


def _die(*_: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def race(root: str, key: str, count_file: str, go_file: str) -> dict[str, object]:
    cache = CompileCache(root)

    def compile_fn(out: Path) -> None:
        with open(count_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.4)  # long enough for the other process to arrive while this one compiles
        out.write_bytes(f"compiled by {os.getpid()}\n".encode() * 1000)

    print("ready", flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.002)
    path = cache.get_or_compile(key, compile_fn)
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "stats": cache.stats.as_dict()}


def hang_mid_write(root: str, key: str, ready_file: str) -> dict[str, object]:
    def compile_fn(out: Path) -> None:
        with open(out, "wb") as f:
            f.write(b"half a graph" * 1000)
            f.flush()
            Path(ready_file).touch()
            time.sleep(120)

    CompileCache(root).get_or_compile(key, compile_fn)
    return {"error": "not killed"}


def die_before_publish(root: str, key: str) -> dict[str, object]:
    LocalStore._rename_into_place = _die  # type: ignore[method-assign]
    CompileCache(root).get_or_compile(key, lambda out: out.write_bytes(b"a whole graph" * 1000))
    return {"error": "did not die"}


def s3_die_before_marker(root: str, url: str) -> dict[str, object]:
    from neuron_cache.store.remote_s3 import S3Remote

    S3Remote._put_marker = _die  # type: ignore[method-assign]
    CompileCache(root, S3Remote(url)).synchronize()
    return {"error": "did not die"}


MODES = {"race": race, "hang-mid-write": hang_mid_write, "die-before-publish": die_before_publish,
         "s3-die-before-marker": s3_die_before_marker}

if __name__ == "__main__":
    print(json.dumps(MODES[sys.argv[1]](*sys.argv[2:])), flush=True)
