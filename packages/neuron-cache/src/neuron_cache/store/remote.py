"""What a remote is (a Hub repo or an S3 prefix), how one is opened from a URL, and retries.

Remote layout (relative to the repo root or the S3 prefix)::

    entries/<key[:2]>/<key>/<file>       the compiled graph, uploaded first
    entries/<key[:2]>/<key>/entry.json   the manifest, uploaded last: readers ignore an entry without it
    registry/<model slug>/<sha256>.json

Entries are sharded by the first two hex digits, as in the local store, so that no folder grows past
a few thousand items (the Hub advises fewer than 10,000 files per folder).

Both remotes are read-through (a local miss asks the remote) and write-behind (only `synchronize`
uploads). Uploads skip what is already complete on the remote, so they are idempotent.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from neuron_cache.store.entry import MANIFEST, CacheEntry
from neuron_cache.store.settings import parse_remote_url

logger = logging.getLogger(__name__)
T = TypeVar("T")


def entry_file(key: str, name: str) -> str:
    return f"entries/{key[:2]}/{key}/{name}"


def key_of_manifest(rel: str) -> str | None:
    """'entries/<key[:2]>/<key>/entry.json' -> key (None for any other path)."""
    parts = rel.split("/")
    if len(parts) == 4 and parts[0] == "entries" and parts[3] == MANIFEST and parts[2][:2] == parts[1]:
        return parts[2]
    return None


@dataclass(kw_only=True, slots=True)
class SyncReport:
    url: str
    uploaded: list[str] = field(default_factory=list)  # keys whose entries were uploaded now
    already_remote: int = 0
    registry_uploaded: int = 0


class Remote(Protocol):
    url: str

    def fetch_entry(self, key: str, dest: Path) -> bool:
        """Download a complete entry (manifest and payload) flat into `dest`; False if there is none."""
        ...

    def entry_keys(self) -> set[str]:
        """Keys of the complete entries (those with a manifest)."""
        ...

    def fetch_registry(self, slug: str, skip: set[str]) -> dict[str, bytes]:
        """Registry files of one model (relative path -> bytes), except those in `skip`."""
        ...

    def push(self, entries: list[CacheEntry], registry: list[tuple[str, Path]]) -> SyncReport:
        """Upload the entries and registry files the remote lacks; payloads before manifests."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with jitter: attempt n waits in [c/2, c], c = min(max_delay, base * 2**n)."""

    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, attempt: int, hint: float | None = None) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2**attempt)
        wait = random.uniform(ceiling / 2, ceiling)
        return max(wait, min(hint, self.max_delay)) if hint is not None else wait


def with_retries(
    call: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy,
    retryable: Callable[[Exception], tuple[bool, float | None]],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `call`; on an exception that `retryable` accepts, wait and run it again (a fresh plan each time)."""
    for attempt in range(policy.attempts):
        try:
            return call()
        except Exception as err:
            again, hint = retryable(err)
            if not again or attempt == policy.attempts - 1:
                raise
            wait = policy.delay(attempt, hint)
            logger.warning("%s failed (%s); retry %d/%d in %.2fs", what, err, attempt + 1, policy.attempts - 1, wait)
            sleep(wait)
    raise AssertionError("unreachable")


def unreachable(url: str, err: Exception) -> str:
    """One line for a remote that could not be reached: which URL, why (from the RemoteError), the fix."""
    why = str(err).removeprefix(f"{url}: ")
    if "HF_HUB_OFFLINE" in why:
        return f"could not reach the remote {url} ({why})"
    fix = (
        "check HF_ENDPOINT, HF_TOKEN and the network" if url.startswith("hf://")
        else "check the bucket, AWS_ENDPOINT_URL, your AWS credentials and the network"
    )
    return f"could not reach the remote {url} ({why}); {fix}"


def open_remote(url: str, **options: object) -> Remote:
    """S3Remote for s3://bucket/prefix, HubRemote for hf://org/repo (their modules import boto3 or huggingface_hub)."""
    kind, _ = parse_remote_url(url)
    if kind == "s3":
        from neuron_cache.store.remote_s3 import S3Remote

        return S3Remote(url, **options)  # type: ignore[arg-type]
    from neuron_cache.store.remote_hub import HubRemote

    return HubRemote(url, **options)  # type: ignore[arg-type]
