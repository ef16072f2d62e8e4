"""An artifact directory: `neuron_config.json`, compiled graphs, weights, tokenizer files.

Layout (paths relative to the artifact root)::

    neuron_config.json          the contract (NeuronConfig)
    graphs/<graph name>.<ext>   one compiled graph per role and bucket
    weights/*.safetensors       weights in the graphs' parameter naming, bound at load
    config.json, generation_config.json, tokenizer files   copied from the checkpoint
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from neuron_cache.config import CONFIG_NAME, NeuronConfig
from neuron_cache.errors import ArtifactError

GRAPHS_DIR = "graphs"
WEIGHTS_DIR = "weights"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Artifact:
    root: Path
    config: NeuronConfig
    # Symlinks may point anywhere under this directory (the root itself, or a Hub cache repo folder whose
    # snapshots link into its blobs/); never outside it.
    boundary: Path | None = None

    @classmethod
    def open(cls, root: str | os.PathLike, verify: bool = True, boundary: str | os.PathLike | None = None) -> Artifact:
        """Read and validate `neuron_config.json`, and (by default) check every listed file's sha256."""
        root = Path(root)
        if not (root / CONFIG_NAME).is_file():
            raise ArtifactError(
                f"{root} is not an artifact: it has no {CONFIG_NAME}. Export one with `neuron-export`, "
                "or point at the directory that holds neuron_config.json."
            )
        boundary = Path(boundary) if boundary is not None else None
        config = NeuronConfig.load(contained_path(root, CONFIG_NAME, boundary))
        artifact = cls(root=root, config=config, boundary=boundary)
        if verify:
            artifact.verify()
        return artifact

    def listed_files(self) -> dict[str, str]:
        """Relative path -> expected sha256, for every graph and weight file."""
        files = {g.file: g.sha256 for g in self.config.graphs.values()}
        files.update({f.path: f.sha256 for f in self.config.weights.files})
        return files

    def verify(self) -> None:
        for rel, expected in self.listed_files().items():
            path = self.path(rel)
            if not path.is_file():
                raise ArtifactError(
                    f"Artifact {self.root} is incomplete: {rel} is listed in {CONFIG_NAME} but missing. "
                    "Re-export the model or copy the whole artifact directory."
                )
            actual = sha256_file(path)
            if actual != expected:
                raise ArtifactError(
                    f"Artifact {self.root} is corrupted: {rel} has sha256 {actual[:16]}..., "
                    f"but {CONFIG_NAME} expects {expected[:16]}.... Re-export the model or re-download the artifact."
                )

    def path(self, rel: str) -> Path:
        """`rel` inside the artifact, symlinks resolved; refuses any path that ends up outside the root."""
        return contained_path(self.root, rel, self.boundary)


def contained_path(root: Path, rel: str, boundary: Path | None = None) -> Path:
    """root/rel with every symlink resolved, or ArtifactError when that leaves `boundary` (default: root).

    neuron_config.json and the files beside it come from whoever made the artifact: a listed path (or a
    symlink in the directory) must never make a loader read, hash or copy a file outside it.
    """
    base = Path(root).resolve()
    limit = Path(boundary).resolve() if boundary is not None else base
    if "\0" in rel or Path(rel).is_absolute():
        raise ArtifactError(f"{root}: path {rel!r} is not a relative path inside the artifact; re-export the model")
    path = (base / rel).resolve()
    if not path.is_relative_to(limit):
        raise ArtifactError(
            f"{root}: {rel!r} points outside the artifact (to {path}); an artifact may only reference its own files. "
            "Replace the symlink or path by the file itself, or re-export the model."
        )
    return path
