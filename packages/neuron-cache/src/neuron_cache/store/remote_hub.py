"""Hugging Face Hub remote: a model repo, ``hf://org/repo``, read and written with huggingface_hub.

- Read: `hf_hub_download` of the manifest ``entries/<key[:2]>/<key>/entry.json`` (a 404 is a miss), then of the payload it
  names; registry files are listed with `list_repo_tree` and downloaded the same way.
- Write (`synchronize`): list the repo at its head commit, then `create_commit` the missing entries
  (payload and manifest in the same commit, so a reader never sees half an entry) with
  ``parent_commit`` = that head. If the branch moved meanwhile the Hub answers 412; on 409, 412, 429
  and 5xx we wait (capped exponential backoff with jitter, honouring Retry-After) and re-plan from a
  fresh listing, so nothing is uploaded twice.
- ``HF_HUB_OFFLINE=1``: no request at all; reads miss (one warning per remote), `synchronize` fails.
- Endpoint: the constructor's `endpoint`, else ``HF_ENDPOINT``; token: huggingface_hub's usual lookup.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neuron_cache.store.entry import MANIFEST, CacheEntry, Manifest, ManifestError
from neuron_cache.store.errors import CacheError, RemoteError
from neuron_cache.store.registry import is_registry_path
from neuron_cache.store.remote import RetryPolicy, SyncReport, entry_file, key_of_manifest, with_retries
from neuron_cache.store.settings import hub_endpoint, hub_offline, parse_remote_url

logger = logging.getLogger(__name__)
RETRY_STATUSES = (409, 412, 429)
Unit = tuple[str | None, list[tuple[str, Path]]]  # (entry key, or None for a registry file; [(path in repo, local file)])


def _retryable(err: BaseException) -> tuple[bool, float | None]:
    """(retry?, Retry-After seconds) for 409, 412, 429 and 5xx answers, also when wrapped in RemoteError."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(err, RemoteError) and err.__cause__ is not None:
        return _retryable(err.__cause__)
    response = getattr(err, "response", None) if isinstance(err, HfHubHTTPError) else None
    if response is None:
        return False, None
    status = response.status_code
    if status not in RETRY_STATUSES and status < 500:
        return False, None
    after = response.headers.get("Retry-After", "")
    return True, float(after) if after.strip().isdigit() else None


class HubRemote:
    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None = None,
        token: str | bool | None = None,
        revision: str = "main",
        retry: RetryPolicy | None = None,
        max_files_per_commit: int = 500,
    ) -> None:
        _, self.repo_id = parse_remote_url(url if url.startswith("hf://") else f"hf://{url}")
        self.url = f"hf://{self.repo_id}"
        if importlib.util.find_spec("huggingface_hub") is None:  # a dependency of neuron-cache, so a broken install
            raise CacheError(
                f"{self.url}: Hub compile caches need huggingface_hub, which is not installed; "
                "pip install 'huggingface_hub>=1.0' (or reinstall neuron-cache)"
            )
        self.endpoint = endpoint or hub_endpoint()
        self.token = token
        self.revision = revision
        self.retry = retry or RetryPolicy()
        self.max_files_per_commit = max(2, max_files_per_commit)
        self._api: Any = None
        self._said_offline = False

    @property
    def api(self) -> Any:
        if self._api is None:
            from huggingface_hub import HfApi

            self._api = HfApi(endpoint=self.endpoint, token=self.token)
        return self._api

    def offline(self, doing: str) -> bool:
        if not hub_offline():
            return False
        if not self._said_offline:
            logger.warning("compile cache: HF_HUB_OFFLINE is set: not contacting %s (%s); local store only", self.url, doing)
            self._said_offline = True
        return True

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Any failure inside a huggingface_hub call (HTTP status, transport, offline) becomes a RemoteError."""
        from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

        try:
            yield
        except (RemoteError, RemoteEntryNotFoundError):
            raise
        except RepositoryNotFoundError as err:
            raise RemoteError(
                f"{self.url}: {what} failed: the repo does not exist or is not readable with your token; "
                f"create it with `neuron-cache create {self.repo_id}` or check HF_TOKEN"
            ) from err
        except Exception as err:  # the transport's own error types are not part of huggingface_hub's API
            raise RemoteError(f"{self.url}: {what} failed ({type(err).__name__}: {err})") from err

    def _download(self, rel: str, into: Path) -> Path | None:
        """Download one file under `into`; None if the repo has no such file."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError

        with self._errors(f"downloading {rel}"):
            try:
                path = hf_hub_download(
                    self.repo_id, rel, revision=self.revision, endpoint=self.endpoint, token=self.token, local_dir=into
                )
            except RemoteEntryNotFoundError:
                return None
        return Path(str(path))

    def _files(self, path: str, revision: str | None = None) -> set[str]:
        """Paths of the files under `path` ('' for the whole repo)."""
        from huggingface_hub import RepoFile
        from huggingface_hub.errors import RemoteEntryNotFoundError

        with self._errors(f"listing {path or 'the repo'}"):
            try:
                tree = self.api.list_repo_tree(self.repo_id, path or None, recursive=True, revision=revision or self.revision)
                return {f.path for f in tree if isinstance(f, RepoFile)}
            except RemoteEntryNotFoundError:
                return set()

    def create_repo(self, private: bool = True) -> str:
        with self._errors("creating the repo"):
            return str(self.api.create_repo(self.repo_id, private=private, exist_ok=True))

    # ---- Remote protocol ------------------------------------------------------------------------
    def fetch_entry(self, key: str, dest: Path) -> bool:
        if self.offline("read"):
            return False
        scratch = Path(tempfile.mkdtemp(prefix=".download.", dir=dest))
        try:
            manifest_path = self._download(entry_file(key, MANIFEST), scratch)
            if manifest_path is None:
                return False
            try:
                manifest = Manifest.from_json(manifest_path.read_bytes(), key)
            except ManifestError as err:
                logger.warning("compile cache: ignoring entry %s on %s: %s", key, self.url, err)
                return False
            payload = self._download(entry_file(key, manifest.file), scratch)
            if payload is None:
                logger.warning("compile cache: entry %s on %s has a manifest but no %s", key, self.url, manifest.file)
                return False
            os.replace(payload, dest / manifest.file)
            os.replace(manifest_path, dest / MANIFEST)
            return True
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def entry_keys(self) -> set[str]:
        if hub_offline():  # an empty set would read as "the remote has no entries"
            raise RemoteError(f"{self.url}: not listed because HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to reach the Hub")
        return {k for rel in self._files("entries") if (k := key_of_manifest(rel)) is not None}

    def fetch_registry(self, slug: str, skip: set[str]) -> dict[str, bytes]:
        if self.offline("registry lookup"):
            return {}
        wanted = sorted(rel for rel in self._files(f"registry/{slug}") if rel not in skip and is_registry_path(rel))
        out: dict[str, bytes] = {}
        if wanted:
            with tempfile.TemporaryDirectory(prefix="neuron-cache-registry-") as tmp:
                for rel in wanted:
                    if (path := self._download(rel, Path(tmp))) is not None:
                        out[rel] = path.read_bytes()
        return out

    def push(self, entries: list[CacheEntry], registry: list[tuple[str, Path]]) -> SyncReport:
        if hub_offline():
            raise RemoteError(f"HF_HUB_OFFLINE is set: cannot synchronize with {self.url}; unset HF_HUB_OFFLINE to upload")
        done: set[str] = set()  # entries committed by an earlier attempt of this call
        done_registry: set[str] = set()

        def attempt() -> SyncReport:
            report = SyncReport(url=self.url)
            with self._errors("reading the head commit"):
                head = self.api.repo_info(self.repo_id, revision=self.revision).sha
            present = self._files("", revision=head)
            units: list[Unit] = []
            for entry in entries:
                if entry_file(entry.key, MANIFEST) in present:
                    if entry.key not in done:
                        report.already_remote += 1
                    continue
                pair = [(entry_file(entry.key, entry.file), entry.file_path), (entry_file(entry.key, MANIFEST), entry.path / MANIFEST)]
                units.append((entry.key, pair))
            units += [(None, [(rel, path)]) for rel, path in registry if rel not in present]
            for batch in self._batches(units):
                head = self._commit(batch, head)
                for key, files in batch:
                    if key is not None:
                        done.add(key)
                    else:
                        done_registry.add(files[0][0])
            report.uploaded = sorted(done)
            report.registry_uploaded = len(done_registry)
            return report

        return with_retries(attempt, what=f"synchronize to {self.url}", policy=self.retry, retryable=_retryable)

    def _batches(self, units: list[Unit]) -> list[list[Unit]]:
        """Commits of at most max_files_per_commit files; an entry's payload and manifest stay together."""
        batches: list[list[Unit]] = []
        size = self.max_files_per_commit
        for unit in units:
            if not batches or sum(len(files) for _, files in batches[-1]) + len(unit[1]) > size:
                batches.append([])
            batches[-1].append(unit)
        return batches

    def _commit(self, batch: list[Unit], parent: str) -> str:
        from huggingface_hub import CommitOperationAdd

        ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path)) for _, files in batch for rel, path in files]
        entries = sum(key is not None for key, _ in batch)
        message = f"neuron-cache: add {entries} compiled graph(s), {len(batch) - entries} registry file(s)"
        with self._errors(f"committing {len(ops)} file(s)"):
            info = self.api.create_commit(
                self.repo_id, ops, commit_message=message, revision=self.revision, parent_commit=parent
            )
        return str(info.oid)
