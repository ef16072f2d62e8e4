"""S3 remote: ``s3://bucket/prefix`` through boto3 (``pip install 'neuron-cache[s3]'``).

S3 writes each object atomically, so an entry becomes visible when its manifest object appears,
and the manifest is written only after the payload object is complete. Endpoint: the constructor's
`endpoint_url`, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; credentials and region come
from boto3's usual chain. Transient errors are retried by botocore (standard mode, capped backoff
with jitter).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neuron_cache.store.entry import MANIFEST, CacheEntry, Manifest, ManifestError
from neuron_cache.store.errors import CacheError, RemoteError
from neuron_cache.store.registry import is_registry_path
from neuron_cache.store.remote import SyncReport, entry_file, key_of_manifest
from neuron_cache.store.settings import parse_remote_url, s3_endpoint

logger = logging.getLogger(__name__)
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Remote:
    def __init__(self, url: str, *, endpoint_url: str | None = None, region_name: str | None = None, client: Any = None):
        _, rest = parse_remote_url(url)
        if client is None and importlib.util.find_spec("boto3") is None:  # say it now, not at the first miss
            raise CacheError(f"{url}: S3 compile caches need boto3, which is not installed; pip install 'neuron-cache[s3]'")
        self.url = url
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or s3_endpoint()
        self.region_name = region_name
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as err:
                raise RemoteError(f"{self.url}: S3 compile caches need boto3; pip install 'neuron-cache[s3]'") from err
            config = Config(retries={"max_attempts": 6, "mode": "standard"})
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region_name, config=config)
        return self._client

    def _name(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        _ = self.client  # a missing boto3 is reported as such, before botocore is imported below
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (Boto3Error, BotoCoreError, ClientError) as err:
            raise RemoteError(f"{self.url}: {what} failed ({err})") from err

    def _list(self, rel_prefix: str) -> dict[str, int]:
        """Relative path -> size of every object under `rel_prefix`."""
        found: dict[str, int] = {}
        cut = len(self._name(""))
        with self._errors(f"listing {rel_prefix}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._name(rel_prefix))
            for page in pages:
                for obj in page.get("Contents", []):
                    found[obj["Key"][cut:]] = obj["Size"]
        return found

    def _get(self, rel: str) -> bytes | None:
        from botocore.exceptions import ClientError

        with self._errors(f"reading {rel}"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._name(rel))["Body"].read()
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in _MISSING:
                    return None
                raise

    # ---- Remote protocol ------------------------------------------------------------------------
    def fetch_entry(self, key: str, dest: Path) -> bool:
        from botocore.exceptions import ClientError

        data = self._get(entry_file(key, MANIFEST))
        if data is None:
            return False
        try:
            manifest = Manifest.from_json(data, key)
        except ManifestError as err:
            logger.warning("compile cache: ignoring entry %s on %s: %s", key, self.url, err)
            return False
        with self._errors(f"downloading {entry_file(key, manifest.file)}"):
            try:
                self.client.download_file(self.bucket, self._name(entry_file(key, manifest.file)), str(dest / manifest.file))
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") not in _MISSING:
                    raise
                logger.warning("compile cache: entry %s on %s has a manifest but no %s", key, self.url, manifest.file)
                return False
        (dest / MANIFEST).write_bytes(data)
        return True

    def entry_keys(self) -> set[str]:
        return {k for rel in self._list("entries/") if (k := key_of_manifest(rel)) is not None}

    def fetch_registry(self, slug: str, skip: set[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for rel in self._list(f"registry/{slug}/"):
            if rel not in skip and is_registry_path(rel) and (data := self._get(rel)) is not None:
                out[rel] = data
        return out

    def push(self, entries: list[CacheEntry], registry: list[tuple[str, Path]]) -> SyncReport:
        report = SyncReport(url=self.url)
        complete = self.entry_keys()
        for entry in entries:
            if entry.key in complete:
                report.already_remote += 1
                continue
            with self._errors(f"uploading {entry_file(entry.key, entry.file)}"):
                self.client.upload_file(str(entry.file_path), self.bucket, self._name(entry_file(entry.key, entry.file)))
            self._put_marker(entry.key, (entry.path / MANIFEST).read_bytes())
            report.uploaded.append(entry.key)
        present = set(self._list("registry/"))
        for rel, path in registry:
            if rel not in present:
                with self._errors(f"uploading {rel}"):
                    self.client.put_object(Bucket=self.bucket, Key=self._name(rel), Body=path.read_bytes())
                report.registry_uploaded += 1
        return report

    def _put_marker(self, key: str, manifest: bytes) -> None:
        """The last write of an entry: from here on readers see it."""
        with self._errors(f"uploading {entry_file(key, MANIFEST)}"):
            self.client.put_object(Bucket=self.bucket, Key=self._name(entry_file(key, MANIFEST)), Body=manifest)
