"""Where an export writes: a failed export leaves nothing that loads and OUTPUT as it was; exporting over an
earlier artifact replaces its own files only; a directory that is not an artifact, the checkpoint itself or an
unwritable path is refused as one line (through the CLI, as a user meets it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from export_testlib import SEQUENCE_LENGTH
from test_export_errors import assert_fails_with, copy_checkpoint, run_cli

from neuron_cache import Artifact, ArtifactError
from neuron_export.export import ExportOptions, export

BATCH_1 = ["--backend", "torch-export", "--disable-neuron-cache", "--batch_size", "1",
           "--sequence_length", str(SEQUENCE_LENGTH), "--max_context_length", "32"]


def export_cli(model: Path, output: Path, buckets: str = "16,32", *extra: str):
    return run_cli("-m", str(model), *BATCH_1, "--context_buckets", buckets, *extra, str(output))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def staging_left(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


@pytest.fixture(scope="module")
def nan_checkpoint(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    """The tiny checkpoint with one NaN weight: every logit, ours and transformers', is NaN."""
    from safetensors.torch import load_file, save_file

    ckpt = copy_checkpoint(tiny_llama_dir, tmp_path_factory.mktemp("nan") / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    state["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    return ckpt


@pytest.fixture(scope="module")
def old_artifact(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    """An earlier export (buckets 8,16,32), into an existing empty directory (what mkdtemp callers pass)."""
    out = tmp_path_factory.mktemp("old_artifact")
    result = export_cli(tiny_llama_dir, out, "8,16,32", "--disable-validation")
    assert result.exit_code == 0, result.output
    return out


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- a failed export writes nothing -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: the float32 second opinion must not pass NaN
def test_nan_weights_fail_validation_and_leave_nothing(nan_checkpoint: Path, tmp_path: Path, dtype: str):
    out = tmp_path / "out"
    assert_fails_with(export_cli(nan_checkpoint, out, "16,32", "--torch_dtype", dtype),
                      "NaN or inf", "NaN/inf weights", f"Nothing was written to {out}.")
    assert not out.exists()
    assert staging_left(tmp_path) == []
    with pytest.raises(ArtifactError, match="is not an artifact"):
        Artifact.open(out)


def test_failed_export_leaves_an_earlier_artifact_as_it_was(old_artifact: Path, nan_checkpoint: Path, tmp_path: Path):
    out = copy_artifact(old_artifact, tmp_path / "out")
    before = snapshot(out)
    assert_fails_with(export_cli(nan_checkpoint, out), "NaN or inf", f"Nothing was written to {out}.")
    assert snapshot(out) == before
    assert staging_left(tmp_path) == []
    assert Artifact.open(out, verify=True).config.context_buckets == [8, 16, 32]


@pytest.mark.parametrize("raised", [KeyboardInterrupt, RuntimeError])
def test_interrupted_export_removes_what_it_created(tiny_llama_dir: Path, tmp_path: Path, monkeypatch, raised):
    """Ctrl-C (or a crash) in the middle of compiling: no OUTPUT, no staging directory, no parents it created."""
    from neuron_export.backends.torch_aot import TorchExportBackend

    def interrupted(self, job, out_file, target):
        raise raised("stopped while compiling")

    monkeypatch.setattr(TorchExportBackend, "compile", interrupted)
    out = tmp_path / "new" / "parents" / "out"
    with pytest.raises(raised, match="stopped while compiling"):
        export(ExportOptions(model=str(tiny_llama_dir), output=str(out), batch_size=1, sequence_length=SEQUENCE_LENGTH,
                             context_buckets=[16, 32], backend="torch-export", disable_neuron_cache=True),
               log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---- exporting over an earlier artifact -------------------------------------------------------------------


def test_reexport_replaces_the_old_artifact_files_only(old_artifact: Path, tiny_llama_dir: Path, tmp_path: Path):
    out = copy_artifact(old_artifact, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    (out / "graphs" / "README.md").write_text("mine too")
    (out / "vocab.json").write_text("{}")  # a tokenizer file an earlier export copied; this checkpoint has none
    result = export_cli(tiny_llama_dir, out, "16,32")
    assert result.exit_code == 0, result.output
    assert f"Warning: {out} holds an artifact exported earlier; it is replaced" in result.output
    config = Artifact.open(out, verify=True).config
    assert config.context_buckets == [16, 32]
    graphs = sorted(p.name for p in (out / "graphs").iterdir())
    assert graphs == sorted([Path(g.file).name for g in config.graphs.values()] + ["README.md"])
    assert "context_encoding_8.pt2" not in graphs  # the stale graph of the first export
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "vocab.json").exists()
    assert staging_left(tmp_path) == []


def test_refuses_an_old_artifact_listing_files_outside_it(old_artifact: Path, tiny_llama_dir: Path, tmp_path: Path):
    """Replacing deletes what neuron_config.json lists: a listed ../path must never be deleted."""
    out = copy_artifact(old_artifact, tmp_path / "out")
    victim = tmp_path / "victim.txt"
    victim.write_text("not the artifact's")
    raw = json.loads((out / "neuron_config.json").read_text())
    raw["graphs"]["token_generation"]["file"] = "../victim.txt"
    (out / "neuron_config.json").write_text(json.dumps(raw))
    before = snapshot(out)
    assert_fails_with(export_cli(tiny_llama_dir, out), str(out), "'../victim.txt'", "not deleting it")
    assert victim.read_text() == "not the artifact's"
    assert snapshot(out) == before


# ---- OUTPUT that must not be written ----------------------------------------------------------------------


def test_refuses_a_non_empty_directory_that_is_not_an_artifact(tiny_llama_dir: Path, tmp_path: Path):
    out = tmp_path / "my-project"
    out.mkdir()
    (out / "train.py").write_text("print('mine')")
    assert_fails_with(export_cli(tiny_llama_dir, out), f"OUTPUT {out} is not empty and is not an artifact",
                      "Choose a new or empty directory")
    assert snapshot(out) == {"train.py": b"print('mine')"}
    assert staging_left(tmp_path) == []


@pytest.mark.parametrize(("where", "fragment"), [
    ("ckpt", "is the model directory"),
    ("ckpt/artifact", "is inside the model directory"),
    ("link-to-ckpt", "is the model directory"),  # symlinks are resolved before comparing
    (".", "contains the model directory"),
])
def test_refuses_output_overlapping_the_checkpoint(tiny_llama_dir: Path, tmp_path: Path, where: str, fragment: str):
    ckpt = copy_checkpoint(tiny_llama_dir, tmp_path / "ckpt")
    (tmp_path / "link-to-ckpt").symlink_to(ckpt, target_is_directory=True)
    before = snapshot(ckpt)
    out = tmp_path / where
    assert_fails_with(export_cli(ckpt, out), f"OUTPUT {out} {fragment}", "Choose an OUTPUT outside the checkpoint")
    assert snapshot(ckpt) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "link-to-ckpt"]


def test_unwritable_output_is_one_line(tiny_llama_dir: Path, tmp_path: Path):
    """OUTPUT whose parent is a regular file cannot be created, even by root (these tests run as root, which a
    permission bit would not stop); the same error path reports a permission error."""
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "sub" / "out"
    assert_fails_with(export_cli(tiny_llama_dir, out), f"cannot create OUTPUT {out}",
                      f"{tmp_path / 'a-file'} is a file, not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]

