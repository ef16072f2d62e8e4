"""CompileCache: get a compiled graph by key, compiling it at most once across processes and machines.

Read path of `get_or_compile(key, compile_fn)`, all under the key's inter-process lock:

1. the local store: a valid entry is a hit; a corrupt or partial one is evicted (logged and warned);
2. the remote, if any: a complete entry is pulled into staging, verified and renamed into place;
3. otherwise `compile_fn(staging / filename)`; the store hashes the file, writes the manifest and
   renames the staging directory into place. Racing processes wait on the lock, then hit.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import Timeout

from neuron_cache.artifact import sha256_file
from neuron_cache.config import NeuronConfig
from neuron_cache.store.entry import CacheEntry, Manifest, ManifestError, check_filename
from neuron_cache.store.errors import CacheError, CorruptEntryWarning, RemoteError
from neuron_cache.store.key import canonical, check_key
from neuron_cache.store.local import LocalStore, not_ours, store_errors
from neuron_cache.store.registry import Registry, model_slug
from neuron_cache.store.remote import Remote, SyncReport, open_remote
from neuron_cache.store.settings import resolve_location

logger = logging.getLogger("neuron_cache.store")
CompileFn = Callable[[Path], object]


@dataclass(slots=True)
class CacheStats:
    """Counters of one CompileCache object.

    hits: served by the local store; misses: not in the local store (each is then a remote hit or
    a compile); compiles: compile_fn calls; remote_hits: pulled from the remote; evictions: corrupt
    or partial local entries removed on read (`cleanup` reports its removals separately).
    """

    hits: int = 0
    misses: int = 0
    compiles: int = 0
    remote_hits: int = 0
    evictions: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(kw_only=True, slots=True)
class CleanupReport:
    """What `cleanup_report` did: `removed` entries (least recently used first; with dry_run, those it
    would remove), `in_use` entries it skipped because a process held their lock, and `left_alone`:
    paths under the root that the cache did not create, which it never deletes."""

    removed: list[CacheEntry]
    in_use: list[CacheEntry]
    left_alone: list[Path]


class CompileCache:
    def __init__(
        self,
        root: str | Path | None = None,
        remote: Remote | None = None,
        *,
        enabled: bool = True,
        lock_timeout: float | None = None,
    ) -> None:
        """`root`: the local store (default from settings); `enabled=False` (--disable-neuron-cache)
        compiles into a fresh temporary directory on every call and stores nothing."""
        self.local = LocalStore(root if root is not None else resolve_location(None).root)
        self.registry = Registry(self.local.root)
        self.remote = remote
        self.enabled = enabled
        self.lock_timeout = lock_timeout
        self.stats = CacheStats()

    @classmethod
    def from_env(
        cls, url: str | None = None, *, enabled: bool = True, lock_timeout: float | None = None, **remote_options: Any
    ) -> CompileCache:
        """`url` (else NEURON_COMPILE_CACHE_URL, else `neuron-cache set`) is a path or a remote; see settings.py.
        `remote_options` go to the remote (S3Remote: endpoint_url, region_name; HubRemote: endpoint, token, retry)."""
        location = resolve_location(url)
        remote = open_remote(location.remote_url, **remote_options) if location.remote_url else None
        return cls(location.root, remote, enabled=enabled, lock_timeout=lock_timeout)

    @property
    def root(self) -> Path:
        return self.local.root

    def __repr__(self) -> str:
        state = "" if self.enabled else ", enabled=False"
        return f"CompileCache({str(self.root)!r}, remote={getattr(self.remote, 'url', None)!r}{state})"

    # ---- compile or reuse ----------------------------------------------------------------------
    def get_or_compile(
        self, key: str, compile_fn: CompileFn, filename: str = "graph.pt2", meta: dict[str, Any] | None = None
    ) -> Path:
        """The path of the compiled graph for `key`; `compile_fn(path)` must write the file at `path`.

        The returned file belongs to the store: copy it, do not modify it. `meta` (JSON) is recorded
        with the entry at compile time and returned by `entry(key).meta`.
        """
        check_key(key)
        check_filename(filename)
        meta = canonical(meta or {}, "meta")
        if not self.enabled:
            self.stats.misses += 1
            return self._compile_uncached(compile_fn, filename)
        try:
            lock = self.local.acquire(key, self.lock_timeout)
        except Timeout as err:
            raise CacheError(
                f"compile cache: waited {self.lock_timeout}s for the lock of {key} ({err.lock_file}), held by another "
                "process that is probably compiling it; wait longer (lock_timeout=None) or disable the cache"
            ) from err
        try:
            entry = self._local_entry(key)
            if entry is not None:
                self.stats.hits += 1
            else:
                self.stats.misses += 1
                self.local.sweep_staging(key)
                entry = self._pull(key) or self._compile(key, compile_fn, filename, meta)
            self.local.touch(key)
            return entry.file_path
        finally:
            lock.release()

    def entry(self, key: str) -> CacheEntry | None:
        """The verified local entry of `key` (with its meta), or None; does not count as an access."""
        entry, _ = self.local.verify(check_key(key))
        return entry

    def entries(self) -> list[CacheEntry]:
        return list(self.local.entries())

    def _local_entry(self, key: str) -> CacheEntry | None:
        entry, problem = self.local.verify(key)
        if problem is not None:
            self._evict_corrupt(key, problem)
        return entry

    def _evict_corrupt(self, key: str, problem: str) -> None:
        message = (
            f"compile cache entry {key} at {self.local.entry_dir(key)} is corrupt or partial: {problem}; "
            "evicting it and rebuilding"
        )
        logger.warning(message)
        warnings.warn(message, CorruptEntryWarning, stacklevel=4)
        self.local.evict(key)
        self.stats.evictions += 1

    def _pull(self, key: str) -> CacheEntry | None:
        if self.remote is None:
            return None
        staging = self.local.staging(key)
        try:
            if not self.remote.fetch_entry(key, staging):
                return None
            manifest = Manifest.load(staging, key)
            actual = sha256_file(staging / manifest.file)
            if actual != manifest.sha256:
                raise ManifestError(f"{manifest.file} has sha256 {actual[:16]}... but the manifest records {manifest.sha256[:16]}...")
            entry = self.local.publish(key, staging, manifest)
            self.stats.remote_hits += 1
            logger.info("compile cache: pulled %s from %s", key, self.remote.url)
            return entry
        except ManifestError as err:
            logger.warning("compile cache: entry %s on %s is corrupt (%s); compiling it instead", key, self.remote.url, err)
            return None
        except RemoteError as err:
            logger.warning("compile cache: %s; compiling %s locally", err, key)
            return None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _compile(self, key: str, compile_fn: CompileFn, filename: str, meta: dict[str, Any]) -> CacheEntry:
        staging = self.local.staging(key)
        try:
            payload = staging / filename
            started = time.time()
            self.stats.compiles += 1
            compile_fn(payload)
            if not payload.is_file():
                raise CacheError(
                    f"compile_fn {getattr(compile_fn, '__name__', compile_fn)!r} did not write {payload} for key {key}; "
                    "it must write the compiled graph at exactly the path it is given"
                )
            manifest = Manifest(
                key=key, file=filename, sha256=sha256_file(payload), size=payload.stat().st_size, meta=meta,
            )
            entry = self.local.publish(key, staging, manifest)
            logger.info("compile cache: compiled %s (%s) in %.1fs", key, filename, time.time() - started)
            return entry
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _compile_uncached(self, compile_fn: CompileFn, filename: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix="neuron-compile-")) / filename
        self.stats.compiles += 1
        compile_fn(path)
        if not path.is_file():
            raise CacheError(f"compile_fn did not write {path}; it must write the compiled graph at the path it is given")
        return path  # the caller owns path.parent

    # ---- registry ------------------------------------------------------------------------------
    def register_export(self, model_id: str, neuron_config: dict[str, Any] | NeuronConfig) -> Path | None:
        """Record that `model_id` was exported with `neuron_config` (idempotent)."""
        if not self.enabled:
            return None
        self.local.prepare()
        with store_errors(self.root):
            return self.registry.add(model_id, neuron_config)

    def lookup(self, model_id: str, **filters: Any) -> list[dict[str, Any]]:
        """Registered neuron_config dicts of `model_id` matching the filters (None filters are ignored).

        Asks the remote for registry files this store lacks (not in offline mode), keeping them; a
        remote that cannot be reached is logged and the local registry answers alone.
        """
        if self.remote is not None and self.enabled:
            try:
                self.pull_registry(model_id)
            except RemoteError as err:
                logger.warning("compile cache: %s; showing the local registry only", err)
        return self.registry.lookup(model_id, **filters)

    def pull_registry(self, model_id: str) -> int:
        """Download the remote's registry files of `model_id` that this store lacks; returns how many.
        Raises RemoteError if the remote cannot be reached (none: 0; offline Hub: 0, logged)."""
        if self.remote is None:
            return 0
        have = set(self.registry.files(model_id))
        pulled = self.remote.fetch_registry(model_slug(model_id), have)
        if pulled:
            self.local.prepare()
        with store_errors(self.root):
            for rel, data in pulled.items():
                self.registry.install(rel, data)
        return len(pulled)

    # ---- remote and housekeeping ---------------------------------------------------------------
    def synchronize(self) -> SyncReport:
        """Upload local entries (each verified first) and registry files that the remote lacks."""
        if self.remote is None:
            raise CacheError(
                "compile cache: no remote to synchronize with; pass a URL, set NEURON_COMPILE_CACHE_URL, "
                "or run `neuron-cache set hf://ORG/REPO` (or s3://BUCKET/PREFIX)"
            )
        valid: list[CacheEntry] = []
        for listed in self.local.entries():
            lock = self.local.acquire(listed.key, self.lock_timeout)
            try:
                entry = self._local_entry(listed.key)
            finally:
                lock.release()
            if entry is not None:
                valid.append(entry)
        registry = [(rel, self.local.root / rel) for rel in self.registry.files()]
        report = self.remote.push(valid, registry)
        logger.info(
            "compile cache: synchronized %s: %d entries uploaded, %d already there, %d registry files uploaded",
            report.url, len(report.uploaded), report.already_remote, report.registry_uploaded,
        )
        return report

    def cleanup(
        self, max_size_bytes: int | None = None, older_than_seconds: float | None = None, dry_run: bool = False
    ) -> list[CacheEntry]:
        """Remove entries unused for `older_than_seconds`, then least recently used ones until the store
        holds at most `max_size_bytes`. Returns the removed entries (or, dry run, those it would remove),
        least recently used first. Entries locked by a running process are skipped; paths the cache
        did not create are left alone, each logged once (`cleanup_report` returns them)."""
        report = self.cleanup_report(max_size_bytes, older_than_seconds, dry_run)
        for path in report.left_alone:
            logger.warning("compile cache: left alone: %s", not_ours(path))
        return report.removed

    def cleanup_report(
        self, max_size_bytes: int | None = None, older_than_seconds: float | None = None, dry_run: bool = False
    ) -> CleanupReport:
        """`cleanup`, reporting what was in use and what was left alone. Refuses (CacheError) a root that
        is neither empty nor a compile cache (no marker, no entries/): it deletes nothing there."""
        self.local.check_is_cache()
        now = time.time()
        listed, foreign = self.local.scan()
        listed.sort(key=lambda e: e.last_access)
        chosen = {e.key: e for e in listed if older_than_seconds is not None and now - e.last_access > older_than_seconds}
        if max_size_bytes is not None:
            kept = [e for e in listed if e.key not in chosen]
            remaining = sum(e.size for e in kept)
            for entry in kept:
                if remaining <= max_size_bytes:
                    break
                chosen[entry.key] = entry
                remaining -= entry.size
        ordered = sorted(chosen.values(), key=lambda e: e.last_access)
        if dry_run:
            return CleanupReport(removed=ordered, in_use=[], left_alone=foreign)
        removed, in_use = [], []
        for entry in ordered:
            (removed if self._remove_if_unlocked(entry) else in_use).append(entry)
        self.local.sweep_all_staging()
        return CleanupReport(removed=removed, in_use=in_use, left_alone=foreign)

    def _remove_if_unlocked(self, entry: CacheEntry) -> bool:
        try:
            lock = self.local.acquire(entry.key, timeout=0)
        except Timeout:
            logger.info("compile cache: %s is in use; not removing it", entry.key)
            return False
        try:
            self.local.evict(entry.key)
            return True
        finally:
            lock.release()
