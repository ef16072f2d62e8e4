"""Which compiled graphs this machine may load without asking: the trust ledger.

A compiled graph is code. A torch-aot graph is a shared library that runs as soon as it is loaded
(its constructors run inside `dlopen`); a torch-export graph is unpickled by `torch.export.load`,
which falls back to full pickle for what it cannot read safely. The sha256 check of `Artifact.open`
cannot help: the hashes live in the same editable `neuron_config.json`.

So, as with transformers' `trust_remote_code`, graphs run only with consent, with one exception that
needs none: graphs this machine produced itself. `neuron-export` records the sha256 of every graph it
writes into an artifact here (compiled now, or taken from the compile cache it was pointed at);
loading checks the sha256 of the *actual* graph files against this ledger. Anything else — an
artifact from the Hub, from a colleague, or one whose graphs were swapped — needs
`trust_remote_code=True` (`--trust-remote-code` on the command lines and the server).

The ledger is one small file per digest under ``$XDG_CACHE_HOME/neuron/trusted-graphs``
(``~/.cache/neuron/...``); deleting the directory revokes it (re-exporting, or consenting, works again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from neuron_cache.artifact import Artifact
from neuron_cache.errors import ArtifactError

TRUST_DIR_NAME = "trusted-graphs"
_DIGEST = re.compile(r"[0-9a-f]{64}")


def trust_dir() -> Path:
    from neuron_cache.store.settings import neuron_home

    return neuron_home() / TRUST_DIR_NAME


def _ledger_path(digest: str) -> Path:
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return trust_dir() / digest[:2] / digest


def record_trusted(digest: str, origin: str) -> None:
    """Remember that this machine produced the graph with this sha256 (`origin` says how, for people)."""
    path = _ledger_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{digest}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps({"origin": origin, "recorded": time.time()}) + "\n")
    os.replace(tmp, path)


def is_trusted(digest: str) -> bool:
    try:
        return _ledger_path(digest).is_file()
    except ValueError:
        return False


class UntrustedGraphsError(ArtifactError):
    """Loading would run compiled code this machine did not produce, and the caller did not consent."""


@dataclass(frozen=True, slots=True)
class TrustDecision:
    untrusted: list[str]  # relative paths of graph files this machine did not produce
    consented: bool
    files: dict[str, Path]  # graph name -> the file to load: the checked snapshot, or the artifact's own


def _hash_and_copy(src: Path, dst: Path | None, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(src, "rb") as f, (open(dst, "xb") if dst is not None else contextlib.nullcontext()) as out:
        while block := f.read(chunk):
            digest.update(block)
            if out is not None:
                out.write(block)
    return digest.hexdigest()


def check_graphs_trusted(artifact: Artifact, names: Iterable[str], *, trust_remote_code: bool,
                         origin: str | None = None, snapshot_dir: Path | None = None) -> TrustDecision:
    """Refuse (UntrustedGraphsError) to load graphs this machine did not produce, unless consented.

    Hashes the files as they are on disk now, not as neuron_config.json claims. `origin` names where
    the artifact came from (a Hub id) for the message. With `snapshot_dir` (a private directory the
    caller created), each graph is copied there in the same read that hashes it, and `files` points at
    the copies: a graph swapped in the artifact directory after the check (or before a bucket is
    loaded lazily) is never the one that runs.
    """
    untrusted, files = [], {}
    for name in names:
        rel = artifact.config.graphs[name].file
        source = artifact.path(rel)
        copy = snapshot_dir / f"{len(files)}-{source.name}" if snapshot_dir is not None else None
        if not is_trusted(_hash_and_copy(source, copy)):
            untrusted.append(rel)
        files[name] = copy or source
    if untrusted and not trust_remote_code:
        source = f"{origin} ({artifact.root})" if origin else str(artifact.root)
        backend = artifact.config.target.backend
        what = ("a compiled shared library (native code) that runs inside this process as soon as it is loaded"
                if backend == "torch-aot" else
                f"a '{backend}' program whose loader can execute code while deserializing it")
        shown = ", ".join(untrusted[:3]) + (f" and {len(untrusted) - 3} more" if len(untrusted) > 3 else "")
        raise UntrustedGraphsError(
            f"{source}: {shown} was not compiled on this machine. Each graph file is {what}, with your "
            f"permissions. If you trust whoever produced this artifact, load it with trust_remote_code=True "
            f"(command line and server: --trust-remote-code); otherwise export the model yourself with "
            f"`neuron-export --model {artifact.config.checkpoint_id or 'CHECKPOINT'} ...`, whose graphs load without asking."
        )
    return TrustDecision(untrusted=untrusted, consented=bool(untrusted), files=files)
