"""An out-of-tree backend plugs its graph loader into neuron-infer through an entry point (issue 11, item 1:
the loader registry), without editing neuron-infer; the trust and signature checks still apply."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from neuron_infer import NeuronModelForCausalLM

PROMPT = torch.tensor([[1, 17, 33, 5, 90]])


def install_fake_backend(site: Path, name: str) -> Path:
    """A distribution on sys.path whose entry point registers `name`, delegating to the torch-export loader
    and counting the graphs it loads (in a file, since the module is imported by the entry point)."""
    counter = site / "loaded.txt"
    (site / "fake_backend.py").write_text(textwrap.dedent(f"""
        from neuron_infer.graphs import load_exported

        def load(file, constants, where):
            with open({str(counter)!r}, "a") as f:
                f.write(where + "\\n")
            return load_exported(file, constants, where)
    """))
    dist = site / "fake_backend-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[neuron_infer.backends]\n{name} = fake_backend:load\n")
    return counter


def test_a_backend_registered_by_entry_point_loads_the_graphs(tiny_artifact, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    counter = install_fake_backend(site, "fake-npu")
    monkeypatch.syspath_prepend(str(site))
    root = tmp_path / "a"
    shutil.copytree(tiny_artifact, root)
    config = json.loads((root / "neuron_config.json").read_text())
    config["target"].update(backend="fake-npu", device="npu")  # a device neuron-infer itself does not run
    (root / "neuron_config.json").write_text(json.dumps(config))

    model = NeuronModelForCausalLM.from_pretrained(root)
    out = model.generate(PROMPT, max_new_tokens=6, eos_token_id=None)
    expected = NeuronModelForCausalLM.from_pretrained(tiny_artifact).generate(PROMPT, max_new_tokens=6,
                                                                               eos_token_id=None)
    assert torch.equal(out, expected)
    loaded = counter.read_text().splitlines()
    assert any("token_generation" in line for line in loaded) and any("context_encoding_8" in line for line in loaded)


def test_an_unknown_backend_lists_the_registered_ones(tiny_artifact, tmp_path, monkeypatch):
    from neuron_infer.graphs import loader_for

    site = tmp_path / "site"
    site.mkdir()
    install_fake_backend(site, "fake-npu")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(RuntimeError, match=r"backend 'nope' \(it runs: torch-aot, torch-export, .*fake-npu.*"
                                           r"'neuron_infer.backends' entry point group"):
        loader_for("nope")
