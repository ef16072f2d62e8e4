"""An out-of-tree backend plugs into both sides through entry points, editing neither package (issue 11):
its compiler into neuron-export (`neuron_export.backends`), its loader into neuron-infer (`neuron_infer.backends`).
The fake backend here delegates to torch-export, marks what it wrote, and must give transformers' tokens."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from support.tiny import export_tiny, make_tiny_checkpoint, transformers_greedy

from neuron_cache import Artifact
from neuron_export.backends import describe_backends, get_backend
from neuron_export.errors import ExportError
from neuron_infer import NeuronModelForCausalLM


def install(site: Path, compiler: str = "fake_npu:Compiler") -> None:
    (site / "fake_npu.py").write_text(textwrap.dedent("""
        from neuron_export.backends.torch_aot import TorchExportBackend
        from neuron_infer.graphs import load_exported

        class Compiler(TorchExportBackend):
            \"\"\"A made-up accelerator compiler (torch-export underneath).\"\"\"
            name = "fake-npu"
            file_extension = ".npu"

        def load(file, constants, where):
            assert str(file).endswith(".npu"), file
            return load_exported(file, constants, where)

        NOT_A_BACKEND = object()
    """))
    dist = site / "fake_npu-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-npu\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[neuron_export.backends]\nfake-npu = {compiler}\n\n"
                                           "[neuron_infer.backends]\nfake-npu = fake_npu:load\n")


def test_a_plugin_backend_compiles_and_runs(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    install(site)
    monkeypatch.syspath_prepend(str(site))
    assert any(line.startswith("fake-npu") and "made-up accelerator" in line for line in describe_backends())
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    art = export_tiny(ckpt, tmp_path / "art", backend="fake-npu", batch_size=1)
    config = Artifact.open(art).config
    assert config.target.backend == "fake-npu"
    assert all(g.file.endswith(".npu") for g in config.graphs.values())
    import transformers

    reference = transformers.LlamaForCausalLM.from_pretrained(ckpt).eval()
    prompt = [1, 17, 33, 5, 90]
    out = NeuronModelForCausalLM.from_pretrained(art).generate(torch.tensor([prompt]), max_new_tokens=8,
                                                               eos_token_id=None)
    assert out[0, len(prompt):].tolist() == transformers_greedy(reference, prompt, 8)


def test_an_entry_point_that_is_not_a_backend_is_named(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    install(site, compiler="fake_npu:NOT_A_BACKEND")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ExportError, match=r"fake-npu = fake_npu:NOT_A_BACKEND .* not a neuron_export.backends.Backend"):
        get_backend("torch-aot")
