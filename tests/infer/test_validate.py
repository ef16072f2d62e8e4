"""Validation is a consumer of the artifact: `neuron_infer.validate` and `neuron-infer validate` open it with
`load_runtime` and compare its prefill and decode steps with transformers' eager model.

A good artifact passes; the same artifact with one weight tensor scaled (its sha256 updated, as someone
tampering would) must fail, through the function and through the command's exit code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from neuron_cache import NeuronConfig, sha256_file
from neuron_infer.validate import ValidationError, validate_artifact

TAMPERED = "layers.1.attn.o_proj.weight"


@pytest.fixture(scope="module")
def tampered(tiny_artifact: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tampered") / "artifact"
    shutil.copytree(tiny_artifact, root)
    path = root / NeuronConfig.load(root).weights.files[0].path
    tensors = load_file(path)
    tensors[TAMPERED] = tensors[TAMPERED] * 1.5
    save_file(tensors, path)
    data = json.loads((root / "neuron_config.json").read_text())
    data["weights"]["files"][0]["sha256"] = sha256_file(path)  # what someone tampering does (test_security.py)
    (root / "neuron_config.json").write_text(json.dumps(data))
    return root


def cli(*args: str) -> subprocess.CompletedProcess:
    # The console script is not installed in the test environment: run the module the script points at.
    return subprocess.run([sys.executable, "-m", "neuron_infer.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_a_good_artifact_validates(tiny_artifact, tiny_reference):
    logs: list[str] = []
    diff = validate_artifact(tiny_artifact, tiny_reference, None, logs.append)
    assert 0 <= diff <= 1e-3
    assert logs == [f"Validation against transformers (float32, prefill + 4 decode steps + chunked prefill): "
                    f"max |logit diff| = {diff:.3g} (atol 0.001)"]


def test_validation_runs_every_decode_graph_in_the_last_slot(tiny_artifact, tiny_reference, monkeypatch):
    from neuron_infer import runtime

    calls: list[tuple[str, object]] = []
    for name in ("prefill", "decode", "decode_slots", "prefill_chunk"):
        original = getattr(runtime.DecoderRuntime, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            where = {"decode_slots": args[0], "prefill": args[1], "prefill_chunk": args[1:]}.get(_name)
            calls.append((_name, where))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(runtime.DecoderRuntime, name, spy)
    validate_artifact(tiny_artifact, tiny_reference, None, lambda _m: None)
    last = NeuronConfig.load(tiny_artifact).batch_size - 1
    # batch 2 with a rows-1 graph: the rows graph and the full batch, alternately; then the chunked-prefill
    # graphs, the probe prompt (12 tokens) in two pieces in slot 0, the second at an offset.
    assert calls == [("prefill", last), ("decode_slots", [last]), ("decode", None), ("decode_slots", [last]),
                     ("decode", None), ("prefill_chunk", (0, 0)), ("prefill_chunk", (0, 6))]


def test_tampered_weights_fail_validation(tampered, tiny_reference):
    with pytest.raises(ValidationError, match=r"compiled graphs differ from transformers by .* > atol 0.001"):
        validate_artifact(tampered, tiny_reference, None, lambda _m: None)


def test_the_command_passes_a_good_artifact(tiny_artifact, tiny_checkpoint):
    proc = cli("validate", str(tiny_artifact), "--model", str(tiny_checkpoint))
    assert proc.returncode == 0, proc.stderr
    assert "max |logit diff| = " in proc.stdout, proc.stdout
    assert f"OK: {tiny_artifact} matches {tiny_checkpoint}" in proc.stdout


def test_the_command_fails_a_tampered_artifact(tampered, tiny_checkpoint):
    proc = cli("validate", str(tampered), "--model", str(tiny_checkpoint), "--atol", "0.01")
    assert proc.returncode == 1, proc.stdout
    assert "Error: compiled graphs differ from transformers by" in proc.stderr and "> atol 0.01" in proc.stderr


def test_the_command_names_a_missing_checkpoint(tiny_artifact, tmp_path):
    proc = cli("validate", str(tiny_artifact), "--model", str(tmp_path / "nowhere"))
    assert proc.returncode == 1
    assert "neither a checkpoint directory nor a .gguf file" in proc.stderr


def test_scaling_the_weight_changes_transformers_output(tiny_reference):
    """Control for the tamper tests: the tampered tensor matters to the model, far beyond the tolerance."""
    ids = torch.arange(3, 15).view(1, -1)
    other = type(tiny_reference)(tiny_reference.config).eval()
    state = tiny_reference.state_dict()
    hf_name = "model.layers.1.self_attn.o_proj.weight"
    other.load_state_dict({**state, hf_name: state[hf_name] * 1.5})
    with torch.no_grad():
        assert (other(ids).logits - tiny_reference(ids).logits).abs().max() > 1e-2
