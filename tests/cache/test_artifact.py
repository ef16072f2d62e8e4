"""`Artifact.open` on a real directory: every listed file is present and has the listed sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from config_factory import GRAPH_FILES, WEIGHT_FILES, valid_config_dict

from neuron_cache import CONFIG_NAME, Artifact, ArtifactError, NeuronConfig, NeuronConfigError, sha256_file

LISTED = [*GRAPH_FILES.values(), *WEIGHT_FILES]


@pytest.fixture
def config_dict() -> dict[str, Any]:
    """A fresh valid `neuron_config.json` dict (config_factory.py); tests may mutate it."""
    return valid_config_dict()


@pytest.fixture
def artifact_dir(tmp_path: Path, config_dict: dict[str, Any]) -> Path:
    """An artifact whose small graph and weight files are really on disk, with their real digests."""
    root = tmp_path / "llama-artifact"
    digests = {}
    for i, rel in enumerate(LISTED):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{rel}\n".encode() + bytes(range(256)) * (i + 1))
        digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    for graph in config_dict["graphs"].values():
        graph["sha256"] = digests[graph["file"]]
    for entry in config_dict["weights"]["files"]:
        entry["sha256"] = digests[entry["path"]]
    (root / CONFIG_NAME).write_text(json.dumps(config_dict, indent=2))
    (root / "tokenizer.json").write_text("{}")  # unlisted files are allowed
    return root


def test_open_reads_and_verifies(artifact_dir: Path, config_dict: dict[str, Any]) -> None:
    artifact = Artifact.open(artifact_dir)
    assert artifact.root == artifact_dir
    assert artifact.config == NeuronConfig.load(artifact_dir)
    assert artifact.config.checkpoint_id == config_dict["checkpoint_id"]
    assert sorted(artifact.listed_files()) == sorted(LISTED)
    for rel, digest in artifact.listed_files().items():
        assert digest == hashlib.sha256((artifact_dir / rel).read_bytes()).hexdigest()
    assert artifact.path("graphs/token_generation.pt2") == artifact_dir / "graphs" / "token_generation.pt2"


def test_open_accepts_a_string_path(artifact_dir: Path) -> None:
    assert Artifact.open(str(artifact_dir)).root == artifact_dir


@pytest.mark.parametrize("chunk", [1, 7, 256, 1 << 22])
def test_sha256_file_matches_hashlib_for_any_chunk_size(artifact_dir: Path, chunk: int) -> None:
    path = artifact_dir / WEIGHT_FILES[1]
    assert sha256_file(path, chunk=chunk) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("rel", LISTED)
def test_missing_file_is_named(artifact_dir: Path, rel: str) -> None:
    (artifact_dir / rel).unlink()
    with pytest.raises(ArtifactError) as caught:
        Artifact.open(artifact_dir)
    text = str(caught.value)
    assert f"{rel} is listed in {CONFIG_NAME} but missing" in text
    assert str(artifact_dir) in text
    assert "Re-export" in text


@pytest.mark.parametrize("rel", LISTED)
def test_altered_byte_is_named(artifact_dir: Path, rel: str) -> None:
    path = artifact_dir / rel
    data = bytearray(path.read_bytes())
    expected = hashlib.sha256(data).hexdigest()
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    actual = hashlib.sha256(data).hexdigest()
    with pytest.raises(ArtifactError) as caught:
        Artifact.open(artifact_dir)
    text = str(caught.value)
    assert f"is corrupted: {rel} has sha256 {actual[:16]}" in text
    assert f"expects {expected[:16]}" in text


def test_verify_false_skips_the_digests(artifact_dir: Path) -> None:
    (artifact_dir / WEIGHT_FILES[0]).write_bytes(b"truncated")
    artifact = Artifact.open(artifact_dir, verify=False)
    with pytest.raises(ArtifactError, match=WEIGHT_FILES[0]):
        artifact.verify()


def test_a_directory_where_a_file_is_listed_counts_as_missing(artifact_dir: Path) -> None:
    rel = GRAPH_FILES["token_generation"]
    (artifact_dir / rel).unlink()
    (artifact_dir / rel).mkdir()
    with pytest.raises(ArtifactError, match=f"{rel} is listed in {CONFIG_NAME} but missing"):
        Artifact.open(artifact_dir)


def test_directory_without_neuron_config_is_not_an_artifact(artifact_dir: Path) -> None:
    (artifact_dir / CONFIG_NAME).unlink()
    with pytest.raises(ArtifactError) as caught:
        Artifact.open(artifact_dir)
    assert str(caught.value).startswith(f"{artifact_dir} is not an artifact: it has no {CONFIG_NAME}.")
    assert "neuron-export" in str(caught.value)


def test_nonexistent_directory_is_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=f"is not an artifact: it has no {CONFIG_NAME}"):
        Artifact.open(tmp_path / "nowhere")


def test_invalid_config_inside_an_artifact_is_a_config_error(artifact_dir: Path) -> None:
    data = json.loads((artifact_dir / CONFIG_NAME).read_text())
    data["torch_dtype"] = "fp8"
    (artifact_dir / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(NeuronConfigError, match=r"field 'torch_dtype' = 'fp8': not a recognised value"):
        Artifact.open(artifact_dir)
