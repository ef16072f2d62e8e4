"""Loading artifacts: round trips, export=True, and every refusal with its message."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from neuron_cache import Artifact, ArtifactError, SchemaVersionError
from neuron_infer import NeuronModelForCausalLM

PROMPT = [1, 17, 33, 5, 90, 41, 7]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(root: Path, **changes) -> None:
    path = root / "neuron_config.json"
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(json.dumps(data))


def test_save_then_load_in_a_new_process_gives_identical_tokens(tiny_artifact, tmp_path):
    model = NeuronModelForCausalLM.from_pretrained(tiny_artifact)
    expected = model.generate(torch.tensor([PROMPT]), max_new_tokens=16, eos_token_id=None)[0].tolist()
    saved = model.save_pretrained(tmp_path / "saved")
    assert (saved / "neuron_config.json").is_file() and (saved / "config.json").is_file()
    code = textwrap.dedent(f"""
        import json, torch
        from neuron_infer import NeuronModelForCausalLM
        m = NeuronModelForCausalLM.from_pretrained({str(saved)!r})
        print(json.dumps(m.generate(torch.tensor([{PROMPT}]), max_new_tokens=16, eos_token_id=None)[0].tolist()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_loading_never_imports_neuron_export_or_model_code(tiny_artifact):
    code = textwrap.dedent(f"""
        import re, sys, torch
        from neuron_infer import NeuronModelForCausalLM
        m = NeuronModelForCausalLM.from_pretrained({str(tiny_artifact)!r})
        m.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3)
        # a model's source is transformers.models.<name>.modeling_<name> (modeling_auto is only a registry)
        model_code = re.compile(r"transformers[.]models[.][a-z0-9_]+[.]modeling_(?!auto)")
        bad = [k for k in sys.modules if k.startswith("neuron_export") or model_code.match(k)]
        print(bad)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_corrupted_graph_file_is_refused(tiny_artifact, tmp_path):
    root = _copy(tiny_artifact, tmp_path / "a")
    graph = root / "graphs" / "token_generation.pt2"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"corrupted: graphs/token_generation\.pt2"):
        NeuronModelForCausalLM.from_pretrained(root)


def test_missing_weight_file_is_refused(tiny_artifact, tmp_path):
    root = _copy(tiny_artifact, tmp_path / "a")
    (root / "weights" / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"weights/model\.safetensors is listed .* but missing"):
        NeuronModelForCausalLM.from_pretrained(root)


def test_artifact_from_a_newer_schema_names_the_upgrade(tiny_artifact, tmp_path):
    root = _copy(tiny_artifact, tmp_path / "a")
    _edit_config(root, schema_version=7)
    with pytest.raises(SchemaVersionError, match=r"pip install -U 'neuron-cache>=0\.7\.0'"):
        NeuronModelForCausalLM.from_pretrained(root)


def test_torch_version_mismatch_is_refused(tiny_artifact, tmp_path):
    root = _copy(tiny_artifact, tmp_path / "a")
    _edit_config(root, target__torch_version="2.99.0")
    with pytest.raises(RuntimeError, match=r"compiled with torch 2\.99\.0.*install torch==2\.99\.0"):
        NeuronModelForCausalLM.from_pretrained(root)


def test_neuron_target_is_refused_here(tiny_artifact, tmp_path):
    root = _copy(tiny_artifact, tmp_path / "a")
    _edit_config(root, target__device="trn1", target__backend="neuron")
    with pytest.raises(RuntimeError, match="compiled for 'trn1'"):
        NeuronModelForCausalLM.from_pretrained(root)


def test_not_an_artifact_directory(tmp_path):
    with pytest.raises(ArtifactError, match=r"no neuron_config\.json"):
        NeuronModelForCausalLM.from_pretrained(tmp_path)


def test_export_true_compiles_then_loads(tiny_checkpoint, tiny_reference, tmp_path):
    model = NeuronModelForCausalLM.from_pretrained(
        tiny_checkpoint, export=True, output=tmp_path / "exported", batch_size=1, sequence_length=32,
        context_buckets=[16], max_context_length=16, backend="torch-export",
    )
    assert model.neuron_config.batch_size == 1
    out = model.generate(torch.tensor([PROMPT]), max_new_tokens=8, eos_token_id=None)
    ref = tiny_reference.generate(torch.tensor([PROMPT]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)
    assert torch.equal(out, ref)


def test_export_true_without_neuron_export_names_the_package(tiny_checkpoint):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["neuron_export"] = None  # as if neuron-export were not installed
        from neuron_infer import NeuronModelForCausalLM
        try:
            NeuronModelForCausalLM.from_pretrained({str(tiny_checkpoint)!r}, export=True)
        except ImportError as err:
            print("ERR", err)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERR" in out.stdout and "pip install neuron-export" in out.stdout, out.stdout + out.stderr[-1000:]


@pytest.mark.parametrize(("built", "here", "refused"),
                         [("AVX512", "AVX2", True), ("AVX2", "AVX2", False), ("AVX2", "AVX512", False)])
def test_graphs_from_a_stronger_cpu_isa_are_refused(tiny_artifact, tmp_path, monkeypatch, built, here, refused):
    from neuron_cache import NeuronConfig
    from neuron_infer import runtime

    root = _copy(tiny_artifact, tmp_path / "a")
    _edit_config(root, target__backend="torch-aot", metadata__cpu_isa=built)
    monkeypatch.setattr(runtime, "host_cpu_isa", lambda: here)
    config = NeuronConfig.load(root)
    if refused:
        with pytest.raises(RuntimeError, match=f"compiled on a {built} CPU; this machine offers {here}"):
            runtime.check_compatible(config, root)
    else:
        runtime.check_compatible(config, root)


def test_exported_artifacts_record_the_cpu_isa(tiny_artifact):
    from neuron_cache import NeuronConfig

    assert NeuronConfig.load(tiny_artifact).metadata["cpu_isa"] == torch.backends.cpu.get_cpu_capability()


def test_cpu_artifacts_take_and_give_host_tensors_without_copies(tiny_artifact):
    # The cuda path (constants and inputs on the GPU, outputs back on the host) cannot run here: no GPU.
    from neuron_infer.runtime import load_runtime

    runtime = load_runtime(Artifact.open(tiny_artifact))
    assert runtime.device == torch.device("cpu")
    args = [torch.zeros(runtime.batch_size, 1, dtype=torch.long), torch.zeros(runtime.batch_size, dtype=torch.long)]
    assert runtime._to_device(args) is args and runtime._to_host(args) is args
    assert {t.device.type for t in runtime.constants.values()} == {"cpu"}


def test_constants_placed_on_another_device_stay_tied():
    from neuron_infer.runtime import _place

    weight, cache = torch.randn(4, 3), torch.zeros(2)
    constants = {"embed_tokens.weight": weight, "lm_head.weight": weight, "k_cache": cache}
    assert _place(constants, torch.device("cpu")) is constants
    placed = _place(constants, torch.device("meta"))  # any non-host device takes the same path as cuda
    assert placed["lm_head.weight"] is placed["embed_tokens.weight"]
    assert {t.device.type for t in placed.values()} == {"meta"}
