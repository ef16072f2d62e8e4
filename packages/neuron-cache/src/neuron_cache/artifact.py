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

    @classmethod
    def open(cls, root: str | os.PathLike, verify: bool = True) -> Artifact:
        """Read and validate `neuron_config.json`, and (by default) check every listed file's sha256."""
        root = Path(root)
        if not (root / CONFIG_NAME).is_file():
            raise ArtifactError(
                f"{root} is not an artifact: it has no {CONFIG_NAME}. Export one with `neuron-export`, "
                "or point at the directory that holds neuron_config.json."
            )
        artifact = cls(root=root, config=NeuronConfig.load(root / CONFIG_NAME))
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
            path = self.root / rel
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
        return self.root / rel
