"""Hostile or broken artifacts (issue 10): every case is one clear error, never a crash or a read outside.

Covers the reading side of neuron-cache: a neuron_config.json that is not UTF-8, nests without end or is
huge, and paths that escape the artifact (a newline past the '..' rule, symlinks to outside files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from config_factory import valid_config_dict

from neuron_cache import CONFIG_NAME, Artifact, ArtifactError, NeuronConfig, NeuronConfigError, sha256_file
from neuron_cache.config import MAX_NESTING


@pytest.fixture
def config_dict() -> dict[str, Any]:
    return valid_config_dict()


def _artifact(root: Path, config_dict: dict[str, Any]) -> Path:
    """An artifact directory whose listed files exist and hash correctly."""
    root.mkdir(parents=True, exist_ok=True)
    for graph in config_dict["graphs"].values():
        path = root / graph["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(graph["file"].encode())
        graph["sha256"] = sha256_file(path)
    for entry in config_dict["weights"]["files"]:
        path = root / entry["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(entry["path"].encode())
        entry["sha256"] = sha256_file(path)
    (root / CONFIG_NAME).write_text(json.dumps(config_dict))
    return root


def test_a_valid_artifact_opens(tmp_path: Path, config_dict: dict[str, Any]) -> None:
    assert Artifact.open(_artifact(tmp_path / "a", config_dict)).config.batch_size == config_dict["batch_size"]


def test_non_utf8_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_NAME
    path.write_bytes(b'{"schema_version": 1, "x": "\xff\xfe"}')
    with pytest.raises(NeuronConfigError, match=r"is not UTF-8 text \(byte 28 is b'\\xff' in .*neuron_config.json\)"):
        NeuronConfig.load(path)


@pytest.mark.parametrize("depth", [MAX_NESTING + 5, 100_000])
def test_deeply_nested_config_is_refused_not_a_recursion_crash(tmp_path: Path, depth: int) -> None:
    path = tmp_path / CONFIG_NAME
    path.write_text('{"schema_version": 1, "metadata": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(NeuronConfigError, match="nests deeper than"):
        NeuronConfig.load(path)


def test_a_huge_config_is_refused_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_cache import config as config_module

    monkeypatch.setattr(config_module, "MAX_CONFIG_BYTES", 1024)
    path = tmp_path / CONFIG_NAME
    path.write_text(json.dumps({"schema_version": 1, "metadata": {"pad": "x" * 4096}}))
    with pytest.raises(NeuronConfigError, match=r"is \d+ bytes, more than a neuron_config.json may be \(1024\)"):
        NeuronConfig.load(path)


def test_newline_in_a_graph_path_cannot_escape(tmp_path: Path, config_dict: dict[str, Any]) -> None:
    root = _artifact(tmp_path / "a", config_dict)
    outside = tmp_path / "outside.pt2"
    outside.write_bytes(b"not yours")
    data = json.loads((root / CONFIG_NAME).read_text())
    data["graphs"]["token_generation"]["file"] = "x\n/../../outside.pt2"
    data["graphs"]["token_generation"]["sha256"] = sha256_file(outside)
    (root / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(NeuronConfigError, match=r"graphs.token_generation.file' = 'x\\n/../../outside.pt2': has the "
                                                r"wrong format"):
        Artifact.open(root)


@pytest.mark.parametrize("what", ["graph", "weights", "config"])
def test_symlink_to_a_file_outside_is_refused(tmp_path: Path, config_dict: dict[str, Any], what: str) -> None:
    root = _artifact(tmp_path / "a", config_dict)
    secret = tmp_path / "secret.txt"
    if what == "config":
        secret.write_text((root / CONFIG_NAME).read_text())
        rel = CONFIG_NAME
    else:
        rel = (config_dict["graphs"]["token_generation"]["file"] if what == "graph"
               else config_dict["weights"]["files"][0]["path"])
        secret.write_bytes((root / rel).read_bytes())  # same bytes: the sha256 check alone would pass
    (root / rel).unlink()
    os.symlink(secret, root / rel)
    with pytest.raises(ArtifactError, match=rf"'{rel}' points outside the artifact \(to {secret}\)"):
        Artifact.open(root)


def test_symlink_inside_the_artifact_is_fine(tmp_path: Path, config_dict: dict[str, Any]) -> None:
    root = _artifact(tmp_path / "a", config_dict)
    rel = config_dict["graphs"]["token_generation"]["file"]
    (root / "store").mkdir()
    os.replace(root / rel, root / "store" / "tg")
    os.symlink(root / "store" / "tg", root / rel)
    Artifact.open(root)


def test_boundary_allows_links_into_a_hub_cache_repo_folder(tmp_path: Path, config_dict: dict[str, Any]) -> None:
    """huggingface_hub's snapshots/<rev>/ files link to ../../blobs/: allowed inside the repo folder, only there."""
    repo = tmp_path / "models--org--x"
    root = _artifact(repo / "snapshots" / "abc", config_dict)
    rel = config_dict["weights"]["files"][0]["path"]
    (repo / "blobs").mkdir()
    os.replace(root / rel, repo / "blobs" / "w")
    os.symlink(Path("../../..") / "blobs" / "w", root / rel)
    with pytest.raises(ArtifactError, match="points outside the artifact"):
        Artifact.open(root)
    Artifact.open(root, boundary=repo)
