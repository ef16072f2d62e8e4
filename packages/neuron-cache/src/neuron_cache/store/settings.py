"""Where the compile cache lives. Every environment variable and file the cache reads is read here.

Resolution of `CompileCache.from_env(url)`:

1. the remote URL: the `url` argument, else ``NEURON_COMPILE_CACHE_URL``, else the default remote
   saved by ``neuron-cache set`` (``$XDG_CACHE_HOME/neuron/cache_config.json``, ``XDG_CACHE_HOME``
   defaulting to ``~/.cache``), else none (local only);
2. the local store: the URL itself when it is a path (``/data/cache`` or ``file:///data/cache``),
   else ``NEURON_COMPILE_CACHE_DIR``, else ``$XDG_CACHE_HOME/neuron/compile``.

Remote URLs: ``s3://bucket/prefix`` (endpoint from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``,
credentials from boto3's usual chain) and ``hf://org/repo`` (a model repo on the Hub at
``HF_ENDPOINT``; ``HF_HUB_OFFLINE=1`` keeps the cache local).

An environment variable set to the empty string counts as unset (as click treats ``--cache-url``'s
environment variable). An empty or blank URL *given* (``--url ""``, ``from_env("")``) is an error:
read as a path it would make the current directory a cache.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from neuron_cache.store.errors import CacheError

ENV_URL = "NEURON_COMPILE_CACHE_URL"
ENV_DIR = "NEURON_COMPILE_CACHE_DIR"
CONFIG_FILE = "cache_config.json"
REMOTE_SCHEMES = ("s3://", "hf://")


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def neuron_home() -> Path:
    """``$XDG_CACHE_HOME/neuron`` (``~/.cache/neuron`` by default): the local store and the config file."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "neuron"


def config_path() -> Path:
    return neuron_home() / CONFIG_FILE


def default_local_dir() -> Path:
    env = os.environ.get(ENV_DIR, "")
    if env and not env.strip():
        raise CacheError(f"{ENV_DIR}={env!r} is blank; set it to a directory or unset it (default: {neuron_home() / 'compile'})")
    return Path(env).expanduser() if env else neuron_home() / "compile"


def read_default_remote() -> str | None:
    path = config_path()
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CacheError(f"{path} is not valid JSON ({err}); fix it or remove it and run `neuron-cache set URL`") from err
    remote = data.get("default_remote") if isinstance(data, dict) else None
    return remote if isinstance(remote, str) and remote else None


def write_default_remote(url: str | None) -> Path:
    """Persist (or, with None, forget) the default remote used when no URL is given."""
    if url is not None:
        parse_remote_url(url)  # refuse to persist something from_env could not open
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"default_remote": url} if url else {}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def parse_remote_url(url: str) -> tuple[str, str]:
    """('s3', 'bucket/prefix') or ('hf', 'org/repo'); raises CacheError for anything else."""
    for scheme in REMOTE_SCHEMES:
        if url.startswith(scheme):
            rest = url[len(scheme):].strip("/")
            if scheme == "hf://" and rest.count("/") != 1:
                raise CacheError(f"compile cache URL {url!r}: a Hub cache is hf://ORG/REPO (for example hf://my-org/neuron-cache)")
            if not rest:
                raise CacheError(f"compile cache URL {url!r} names no bucket or repo")
            return scheme[:-3], rest
    raise CacheError(f"compile cache URL {url!r}: allowed remotes are s3://BUCKET[/PREFIX] and hf://ORG/REPO")


def is_remote_url(url: str) -> bool:
    return url.startswith(REMOTE_SCHEMES)


@dataclass(frozen=True, slots=True)
class CacheLocation:
    root: Path
    remote_url: str | None
    source: str  # where remote_url (or root, for a path URL) came from


def resolve_location(url: str | None = None) -> CacheLocation:
    source = "argument"
    if url is None and os.environ.get(ENV_URL):
        url, source = os.environ[ENV_URL], ENV_URL
    if url is None:
        url, source = read_default_remote(), str(config_path())
    if url is None:
        return CacheLocation(root=default_local_dir(), remote_url=None, source="default")
    if not url.strip() or url.strip() == "file://":
        given = f"{ENV_URL}={url!r}" if source == ENV_URL else f"compile cache URL {url!r} (--url, neuron-export --cache-url)"
        raise CacheError(
            f"{given} is empty; give a directory, s3://BUCKET/PREFIX or hf://ORG/REPO, or leave it out to use "
            f"{ENV_DIR} or the default store"
        )
    if "://" in url and not url.startswith("file://"):
        parse_remote_url(url)
        return CacheLocation(root=default_local_dir(), remote_url=url, source=source)
    path = url[len("file://"):] if url.startswith("file://") else url
    return CacheLocation(root=Path(path).expanduser(), remote_url=None, source=source)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE from the environment now, or as huggingface_hub read it at import."""
    if _is_true(os.environ.get("HF_HUB_OFFLINE")) or _is_true(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(constants is not None and constants.is_offline_mode())


def hub_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
