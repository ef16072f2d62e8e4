"""The local store: content-addressed entry directories, staged and renamed into place.

Layout under the root::

    entries/<key[:2]>/<key>/entry.json   manifest and completion marker (its mtime is the last access)
    entries/<key[:2]>/<key>/<file>       the compiled graph
    tmp/<key>.<pid>.<token>/             staging of an entry being compiled or pulled; never read
    locks/<key>.lock                     one inter-process lock per key (kept: deleting lock files races)
    registry/                            exported configurations (registry.py)

Every change to `entries/` is one rename (of a complete staging directory into place, or of an entry
out to `tmp/` before deleting it), done while holding the key's lock; a killed process leaves at
most a staging directory, which the next holder of that key's lock (or `cleanup`) deletes.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from neuron_cache.artifact import sha256_file
from neuron_cache.store.entry import MANIFEST, CacheEntry, Manifest, ManifestError

logger = logging.getLogger(__name__)


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk (a directory fsync some filesystems refuse is skipped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


class LocalStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self.entries_dir = self.root / "entries"
        self.tmp_dir = self.root / "tmp"
        self.locks_dir = self.root / "locks"
        self.registry_dir = self.root / "registry"

    # ---- paths and locks ---------------------------------------------------------------------
    def entry_dir(self, key: str) -> Path:
        return self.entries_dir / key[:2] / key

    def lock(self, key: str, timeout: float | None = None) -> FileLock:
        """The key's inter-process lock (None: wait for as long as the holder compiles)."""
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.locks_dir / f"{key}.lock"), timeout=-1 if timeout is None else timeout)

    def staging(self, key: str) -> Path:
        """A fresh private directory for building `key`; only the holder of the key's lock may use it."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        path = self.tmp_dir / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"
        path.mkdir()
        return path

    # ---- reading -----------------------------------------------------------------------------
    def verify(self, key: str) -> tuple[CacheEntry | None, str | None]:
        """(entry, None) if valid, (None, None) if absent, (None, problem) if present but broken.

        Checks the manifest, the payload's size and its sha256 (the whole file is read).
        """
        path = self.entry_dir(key)
        if not path.exists():
            return None, None
        try:
            manifest = Manifest.load(path, key)
        except ManifestError as err:
            return None, str(err)
        payload = path / manifest.file
        try:
            size = payload.stat().st_size
        except OSError:
            return None, f"{manifest.file} is missing"
        if size != manifest.size:
            return None, f"{manifest.file} has {size} bytes but {MANIFEST} records {manifest.size}"
        try:
            actual = sha256_file(payload)
        except OSError as err:
            return None, f"{manifest.file} is unreadable ({err.strerror})"
        if actual != manifest.sha256:
            return None, f"{manifest.file} has sha256 {actual[:16]}... but {MANIFEST} records {manifest.sha256[:16]}..."
        return self._entry(path, manifest), None

    def _entry(self, path: Path, manifest: Manifest | None, problem: str | None = None) -> CacheEntry:
        size, stamp = 0, path.stat().st_mtime
        for item in os.scandir(path):
            st = item.stat(follow_symlinks=False)
            size += st.st_size
            if item.name == MANIFEST:
                stamp = st.st_mtime
        return CacheEntry(
            key=path.name, path=path, file=manifest.file if manifest else "", sha256=manifest.sha256 if manifest else "",
            size=size, created=manifest.created if manifest else stamp, last_access=stamp,
            meta=manifest.meta if manifest else {}, problem=problem,
        )

    def entries(self) -> Iterator[CacheEntry]:
        """Every entry directory, without hashing; an unreadable manifest is reported in `problem`."""
        if not self.entries_dir.is_dir():
            return
        for shard in sorted(self.entries_dir.iterdir()):
            for path in sorted(shard.iterdir()) if shard.is_dir() else ():
                try:
                    try:
                        yield self._entry(path, Manifest.load(path, path.name))
                    except ManifestError as err:
                        yield self._entry(path, None, problem=str(err))
                except FileNotFoundError:
                    continue  # removed by another process while listing

    # ---- writing (the caller holds the key's lock) ---------------------------------------------
    def publish(self, key: str, staging: Path, manifest: Manifest) -> CacheEntry:
        """Write the manifest into `staging` (which holds the payload only) and rename it into place."""
        for item in staging.iterdir():  # keep only what the manifest vouches for
            if item.name != manifest.file:
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        _fsync(staging / manifest.file)
        (staging / MANIFEST).write_text(manifest.to_json())
        _fsync(staging / MANIFEST)
        target = self.entry_dir(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # only reachable if something wrote without the lock
            self.evict(key)
        self._rename_into_place(staging, target)
        _fsync(target.parent)
        self.touch(key)
        return self._entry(target, manifest)

    def _rename_into_place(self, staging: Path, target: Path) -> None:
        os.rename(staging, target)  # atomic; a separate method so tests can interrupt exactly here

    def evict(self, key: str) -> None:
        """Make the entry invisible with one rename, then delete it."""
        path = self.entry_dir(key)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        trash = self.tmp_dir / f"{key}.evicted.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def touch(self, key: str, when: float | None = None) -> None:
        """Record an access (for LRU cleanup); `when` sets an explicit time."""
        try:
            os.utime(self.entry_dir(key) / MANIFEST, None if when is None else (when, when))
        except OSError as err:  # a read-only store still serves hits
            logger.debug("compile cache: cannot record access to %s (%s)", key, err)

    def sweep_staging(self, key: str) -> int:
        """Delete staging left by killed processes for `key` (the caller holds the key's lock)."""
        count = 0
        for path in self.tmp_dir.glob(f"{key}.*") if self.tmp_dir.is_dir() else ():
            shutil.rmtree(path, ignore_errors=True)
            count += 1
        if count:
            logger.info("compile cache: removed %d stale staging dir(s) of %s", count, key)
        return count

    def sweep_all_staging(self) -> int:
        """Delete every staging directory whose key is not locked by a live process."""
        count = 0
        keys = {p.name.split(".", 1)[0] for p in self.tmp_dir.iterdir()} if self.tmp_dir.is_dir() else set()
        for key in sorted(keys):
            lock = self.lock(key, timeout=0)
            try:
                lock.acquire()
            except Timeout:
                continue
            try:
                count += self.sweep_staging(key)
            finally:
                lock.release()
        return count

    def total_size(self) -> int:
        return sum(e.size for e in self.entries())
