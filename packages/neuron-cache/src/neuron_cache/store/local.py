"""The local store: content-addressed entry directories, staged and renamed into place.

Layout under the root::

    .neuron-compile-cache                written when the store creates the root (proof that it is a cache)
    entries/<key[:2]>/<key>/entry.json   manifest and completion marker (its mtime is the last access)
    entries/<key[:2]>/<key>/<file>       the compiled graph
    tmp/<key>.<pid>.<token>/             staging of an entry being compiled or pulled; never read
    tmp/<key>.evicted.<pid>.<token>/     an entry being deleted
    locks/<key>.lock                     one inter-process lock per key (kept: deleting lock files races)
    registry/                            exported configurations (registry.py)

Every change to `entries/` is one rename (of a complete staging directory into place, or of an entry
out to `tmp/` before deleting it), done while holding the key's lock; a killed process leaves at
most a staging directory, which the next holder of that key's lock (or `cleanup`) deletes.

What the store deletes is only what it can prove it made, by name and shape: staging directories
named as above, and entry directories named by a key under their 2-hex shard that hold no
directory. A symlink is never deleted through. Anything else under the root belongs to someone
else: `scan` reports it and nothing removes it.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from neuron_cache.artifact import sha256_file
from neuron_cache.store.entry import MANIFEST, CacheEntry, Manifest, ManifestError
from neuron_cache.store.errors import CacheError

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

MARKER = ".neuron-compile-cache"
MARKER_TEXT = "A neuron compile cache (neuron-cache). `neuron-cache cleanup` deletes only what the cache created here.\n"
LAYOUT = ("entries", "tmp", "locks", "registry")
FIX = "choose another directory with NEURON_COMPILE_CACHE_DIR or --url (neuron-export: --cache-url)"
_KEY = r"[0-9a-f]{16,128}"  # as key.check_key
_KEY_RE = re.compile(_KEY)
_SHARD_RE = re.compile(r"[0-9a-f]{2}")
_STAGING_RE = re.compile(rf"(?P<key>{_KEY})\.(?:evicted\.)?[0-9]+\.[0-9a-f]{{8}}")
_LOCK_RE = re.compile(rf"{_KEY}\.lock")
_SLUG_RE = re.compile(r"[A-Za-z0-9._-]+")
_REGISTRY_FILE_RE = re.compile(r"[0-9a-f]{64}\.json|\.[0-9a-f]{64}\.json\.[0-9]+\.[0-9a-f]{8}\.tmp")


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


def _blocking_file(path: Path) -> Path | None:
    """The existing non-directory at `path` or above it that stops the store from making `path` a directory."""
    for candidate in (path, *path.parents):
        try:
            mode = candidate.stat().st_mode
        except OSError:
            continue
        return None if stat.S_ISDIR(mode) else candidate
    return None


def store_error(root: Path, err: OSError) -> CacheError:
    """One line: which directory, what failed on which path, and the fix."""
    blocker = _blocking_file(root)
    if blocker is not None:
        kind = "a regular file" if blocker.is_file() else "not a directory"
        return CacheError(f"compile cache directory {root} cannot be used: {blocker} is {kind}; {FIX}, or move it away")
    where = err.filename if err.filename is not None else root
    reason = err.strerror or str(err)
    return CacheError(
        f"compile cache directory {root} cannot be used: {where}: {reason}; {FIX}, or fix the permissions of {root}"
    )


@contextmanager
def store_errors(root: Path) -> Iterator[None]:
    """Turn an OSError on the store's paths into a CacheError naming the path and the fix."""
    try:
        yield
    except Timeout:  # an OSError subclass too, but the caller reports a lock wait itself
        raise
    except OSError as err:
        raise store_error(root, err) from err


def _guarded(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: LocalStore, *args: Any, **kwargs: Any) -> Any:
        with store_errors(self.root):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _real_dir(path: Path) -> bool:
    return not path.is_symlink() and path.is_dir()


def _real_file(path: Path) -> bool:
    return not path.is_symlink() and path.is_file()


def not_ours(path: Path) -> str:
    return f"{path} (not created by the compile cache)"


class LocalStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self.entries_dir = self.root / "entries"
        self.tmp_dir = self.root / "tmp"
        self.locks_dir = self.root / "locks"
        self.registry_dir = self.root / "registry"
        self._prepared = False

    # ---- the root ------------------------------------------------------------------------------
    @_guarded
    def prepare(self) -> None:
        """Create the root before the first write. A root the store creates (or finds empty) gets
        MARKER: what later lets `cleanup` tell a compile cache from a directory given by mistake."""
        if self._prepared:
            return
        fresh = not self.root.exists() or (self.root.is_dir() and next(self.root.iterdir(), None) is None)
        self.root.mkdir(parents=True, exist_ok=True)
        if fresh:
            try:
                with open(self.root / MARKER, "x") as out:
                    out.write(MARKER_TEXT)
            except FileExistsError:
                pass  # another process created the root at the same moment
        self._prepared = True

    @_guarded
    def check_usable(self) -> None:
        """Raise the one-line CacheError if a file stands where the root or one of its parents should be."""
        if _blocking_file(self.root) is not None:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.root))

    def is_cache(self) -> bool:
        """True if the root has the marker or the layout of a store written before the marker existed.
        A missing or empty root counts too: there is nothing in it to mistake for an entry."""
        self.check_usable()
        with store_errors(self.root):
            if not self.root.exists() or (self.root / MARKER).is_file() or self.entries_dir.is_dir():
                return True
            return next(self.root.iterdir(), None) is None

    def check_is_cache(self) -> None:
        """Before deleting anything: refuse a root that is neither empty nor recognisably a cache."""
        if not self.is_cache():
            raise CacheError(
                f"{self.root} is not a compile cache (no {MARKER} marker and no entries/ directory), so cleanup "
                f"deletes nothing there; pass the cache directory with --url or NEURON_COMPILE_CACHE_DIR, or, if it "
                f"is a cache made by an older neuron-cache, create the marker: touch {self.root / MARKER}"
            )

    # ---- paths and locks ---------------------------------------------------------------------
    def entry_dir(self, key: str) -> Path:
        return self.entries_dir / key[:2] / key

    @_guarded
    def lock(self, key: str, timeout: float | None = None) -> FileLock:
        """The key's inter-process lock (None: wait for as long as the holder compiles)."""
        self.prepare()
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.locks_dir / f"{key}.lock"), timeout=-1 if timeout is None else timeout)

    @_guarded
    def acquire(self, key: str, timeout: float | None = None) -> FileLock:
        """The key's lock, held; raises filelock.Timeout after `timeout` seconds."""
        lock = self.lock(key, timeout)
        lock.acquire()
        return lock

    @_guarded
    def staging(self, key: str) -> Path:
        """A fresh private directory for building `key`; only the holder of the key's lock may use it."""
        self.prepare()
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        path = self.tmp_dir / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"
        path.mkdir()
        return path

    def owns_entry_dir(self, path: Path) -> bool:
        """entries/<shard>/<key>/ as the store makes it: real directories, named by a key of that shard,
        holding files only (a payload and entry.json)."""
        shard = path.parent
        if not (_KEY_RE.fullmatch(path.name) and path.name[:2] == shard.name and shard.parent == self.entries_dir):
            return False
        if not (_real_dir(shard) and _real_dir(path)):
            return False
        with os.scandir(path) as items:
            return not any(item.is_dir(follow_symlinks=False) for item in items)

    def _check_entry_path(self, key: str) -> Path:
        path = self.entry_dir(key)
        if os.path.lexists(path) and not self.owns_entry_dir(path):
            raise CacheError(
                f"compile cache: {not_ours(path)} is where entry {key[:16]}... belongs (a symbolic link, or a "
                "directory holding directories); it is left alone: move it out of the cache directory"
            )
        return path

    # ---- reading -----------------------------------------------------------------------------
    @_guarded
    def verify(self, key: str) -> tuple[CacheEntry | None, str | None]:
        """(entry, None) if valid, (None, None) if absent, (None, problem) if present but broken.

        Checks the manifest, the payload's size and its sha256 (the whole file is read). Raises
        CacheError if something the store did not create is at the entry's path.
        """
        path = self._check_entry_path(key)
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

    @_guarded
    def scan(self) -> tuple[list[CacheEntry], list[Path]]:
        """(entries, foreign): every entry directory holding a manifest, without hashing (an
        unreadable manifest is reported in `problem`), and every path under the root that the store
        did not create, which nothing deletes."""
        entries: list[CacheEntry] = []
        foreign: list[Path] = []
        if not self.root.is_dir():
            return entries, foreign
        for item in self._children(self.root):
            if not ((item.name == MARKER and _real_file(item)) or (item.name in LAYOUT and item.is_dir())):
                foreign.append(item)
        foreign += [p for p in self._children(self.tmp_dir) if not self._is_staging(p)]
        foreign += [p for p in self._children(self.locks_dir) if not (_LOCK_RE.fullmatch(p.name) and _real_file(p))]
        for slug in self._children(self.registry_dir):
            if not (_SLUG_RE.fullmatch(slug.name) and _real_dir(slug)):
                foreign.append(slug)
                continue
            foreign += [p for p in self._children(slug) if not (_REGISTRY_FILE_RE.fullmatch(p.name) and _real_file(p))]
        for shard in self._children(self.entries_dir):
            if not (_SHARD_RE.fullmatch(shard.name) and _real_dir(shard)):
                foreign.append(shard)
                continue
            for path in self._children(shard):
                try:
                    if not (self.owns_entry_dir(path) and (path / MANIFEST).is_file()):
                        foreign.append(path)
                        continue
                    try:
                        entries.append(self._entry(path, Manifest.load(path, path.name)))
                    except ManifestError as err:
                        entries.append(self._entry(path, None, problem=str(err)))
                except FileNotFoundError:
                    continue  # removed by another process while listing
        return entries, foreign

    @staticmethod
    def _children(directory: Path) -> list[Path]:
        return sorted(directory.iterdir()) if directory.is_dir() else []

    def entries(self) -> Iterator[CacheEntry]:
        """Every entry directory (see `scan`)."""
        yield from self.scan()[0]

    # ---- writing (the caller holds the key's lock) ---------------------------------------------
    @_guarded
    def publish(self, key: str, staging: Path, manifest: Manifest) -> CacheEntry:
        """Write the manifest into `staging` (which holds the payload only) and rename it into place."""
        for item in staging.iterdir():  # keep only what the manifest vouches for; staging is ours
            if item.name != manifest.file:
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        _fsync(staging / manifest.file)
        (staging / MANIFEST).write_text(manifest.to_json())
        _fsync(staging / MANIFEST)
        target = self.entry_dir(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(target):  # only reachable if something wrote without the lock
            self.evict(key)
        self._rename_into_place(staging, target)
        _fsync(target.parent)
        self.touch(key)
        return self._entry(target, manifest)

    def _rename_into_place(self, staging: Path, target: Path) -> None:
        os.rename(staging, target)  # atomic; a separate method so tests can interrupt exactly here

    @_guarded
    def evict(self, key: str) -> None:
        """Make the entry invisible with one rename, then delete it. Raises CacheError, deleting
        nothing, if what is at the entry's path is not an entry directory the store made."""
        path = self._check_entry_path(key)
        if not os.path.lexists(path):
            return
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

    def _is_staging(self, path: Path, key: str | None = None) -> bool:
        match = _STAGING_RE.fullmatch(path.name)
        return match is not None and (key is None or match["key"] == key) and _real_dir(path)

    def _staging_dirs(self, key: str | None = None) -> list[Path]:
        return [p for p in self._children(self.tmp_dir) if self._is_staging(p, key)]

    @_guarded
    def sweep_staging(self, key: str) -> int:
        """Delete staging left by killed processes for `key` (the caller holds the key's lock)."""
        count = 0
        for path in self._staging_dirs(key):
            shutil.rmtree(path, ignore_errors=True)
            count += 1
        if count:
            logger.info("compile cache: removed %d stale staging dir(s) of %s", count, key)
        return count

    @_guarded
    def sweep_all_staging(self) -> int:
        """Delete every staging directory whose key is not locked by a live process."""
        count = 0
        keys = {_STAGING_RE.fullmatch(p.name)["key"] for p in self._staging_dirs()}  # type: ignore[index]
        for key in sorted(keys):
            try:
                lock = self.acquire(key, timeout=0)
            except Timeout:
                continue
            try:
                count += self.sweep_staging(key)
            finally:
                lock.release()
        return count

    def total_size(self) -> int:
        return sum(e.size for e in self.entries())
