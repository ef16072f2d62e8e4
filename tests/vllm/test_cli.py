"""`neuron-vllm serve`: a fast --help that imports neither torch nor vllm, export-then-serve for a
checkpoint (reused on the next run), and shape options that disagree with an artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).parent / "neuron-vllm"
EXPORT_ARGS = ["--backend", "torch-export", "--batch_size", "2", "--sequence_length", "64",
               "--max_context_length", "32", "--context_buckets", "16,32"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=600, env=env)


def test_help_imports_neither_torch_nor_vllm():
    probe = ("import sys, json; from neuron_vllm.cli import main\n"
             "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "Usage: " in out.stdout and "--served-model-name" in out.stdout
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.slow
def test_a_checkpoint_is_exported_once_then_reused(tiny_checkpoint, tmp_path):
    import os

    env = {**os.environ, "NEURON_VLLM_ARTIFACTS": str(tmp_path / "artifacts"), "HF_HUB_OFFLINE": "1"}
    first = cli("serve", str(tiny_checkpoint), *EXPORT_ARGS, "--port", "8123", "--dry-run", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "exporting" in first.stderr
    (artifact,) = (tmp_path / "artifacts").iterdir()
    assert (artifact / "neuron_config.json").is_file()
    command = first.stderr.strip().splitlines()[-1]
    for part in (f"--model {artifact}", "--host 127.0.0.1", "--port 8123", "--max-num-seqs 2", "--max-model-len 64",
                 "--dtype float32", "vllm.entrypoints.openai.api_server"):
        assert part in command, f"{part!r} missing from {command}"
    again = cli("serve", str(tiny_checkpoint), *EXPORT_ARGS, "--dry-run", env=env)
    assert again.returncode == 0 and "reusing" in again.stderr and "exporting" not in again.stderr


def test_shape_options_must_agree_with_an_artifact(tiny_artifact):
    out = cli("serve", str(tiny_artifact), "--batch_size", "4", "--dry-run")
    assert out.returncode == 2
    assert "--batch_size 4 disagrees" in out.stderr and "batch_size=2" in out.stderr
    ok = cli("serve", str(tiny_artifact), "--batch_size", "2", "--dry-run", "--", "--api-key", "k")
    assert ok.returncode == 0 and ok.stderr.strip().endswith("--api-key k")


def test_an_embedding_checkpoint_is_exported_with_its_batch_buckets(tmp_path):
    """A sentence-transformers folder served directly: exported as an embedding artifact with the batch buckets
    asked for, served by vLLM's pooling runner; the same buckets then match it, others are refused."""
    import os

    from support.encoders import make_tiny_sentence_transformers

    from neuron_cache import NeuronConfig

    folder = make_tiny_sentence_transformers(tmp_path / "st")
    env = {**os.environ, "NEURON_VLLM_ARTIFACTS": str(tmp_path / "artifacts"), "HF_HUB_OFFLINE": "1"}
    args = ["--backend", "torch-export", "--batch_size", "4", "--batch_buckets", "1,4", "--sequence_length", "32",
            "--context_buckets", "16,32", "--dry-run"]
    first = cli("serve", str(folder), *args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    (artifact,) = (tmp_path / "artifacts").iterdir()
    config = NeuronConfig.load(artifact)
    assert (config.task, config.encoder_batch_buckets) == ("feature-extraction", [1, 4])
    assert "--runner pooling" in first.stderr.strip().splitlines()[-1]
    wrong = cli("serve", str(artifact), "--batch_buckets", "2,4", "--dry-run", env=env)
    assert wrong.returncode == 2 and "--batch_buckets 2,4 disagrees" in wrong.stderr and "[1, 4]" in wrong.stderr
