"""push_to_hub, then from_pretrained(hub id), against the fake Hub of tests/cache/fake_hub.py (127.0.0.1)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
import torch

from neuron_infer import NeuronModelForCausalLM


def _fake_hub_module():
    path = Path(__file__).resolve().parents[1] / "cache" / "fake_hub.py"
    spec = importlib.util.spec_from_file_location("fake_hub_for_infer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[object]:
    fake = _fake_hub_module().FakeHub()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", fake.url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield fake
    fake.close()


def test_push_to_hub_then_load_by_repo_id(tiny_artifact, hub):
    model = NeuronModelForCausalLM.from_pretrained(tiny_artifact)
    model.push_to_hub("org/tiny-llama-neuron", token="hf_fake")
    stored = hub.repos["org/tiny-llama-neuron"].snapshot("main")
    assert {"neuron_config.json", "weights/model.safetensors", "graphs/token_generation.pt2"} <= set(stored)
    assert stored["neuron_config.json"] == (tiny_artifact / "neuron_config.json").read_bytes()

    loaded = NeuronModelForCausalLM.from_pretrained("org/tiny-llama-neuron", token="hf_fake")
    prompt = torch.tensor([[1, 17, 33, 5, 90]])
    expected = model.generate(prompt, max_new_tokens=8, eos_token_id=None)
    assert torch.equal(loaded.generate(prompt, max_new_tokens=8, eos_token_id=None), expected)


def test_an_artifact_from_the_hub_needs_consent_unless_this_machine_compiled_it(tiny_artifact, hub, tmp_path,
                                                                                 monkeypatch):
    from neuron_cache import trust
    from neuron_cache.trust import UntrustedGraphsError

    original = NeuronModelForCausalLM.from_pretrained(tiny_artifact)
    original.push_to_hub("org/someone-elses", token="hf_fake")
    prompt = torch.tensor([[1, 17, 33, 5, 90]])
    expected = original.generate(prompt, max_new_tokens=4, eos_token_id=None)
    # Another machine's ledger never saw these graphs: the Hub id is named, nothing is loaded.
    monkeypatch.setattr(trust, "trust_dir", lambda: tmp_path / "empty-ledger")
    with pytest.raises(UntrustedGraphsError, match=r"^org/someone-elses \(.*\): .* trust_remote_code=True"):
        NeuronModelForCausalLM.from_pretrained("org/someone-elses", token="hf_fake")
    with pytest.warns(UserWarning, match="trust_remote_code=True"):
        model = NeuronModelForCausalLM.from_pretrained("org/someone-elses", token="hf_fake", trust_remote_code=True)
    assert torch.equal(model.generate(prompt, max_new_tokens=4, eos_token_id=None), expected)


def test_push_to_hub_refuses_a_symlink_to_a_file_outside_before_uploading(tiny_artifact, hub, tmp_path):
    import os
    import shutil

    from neuron_cache import ArtifactError

    root = tmp_path / "a"
    shutil.copytree(tiny_artifact, root)
    (tmp_path / "id_rsa").write_text("private key")
    os.symlink(tmp_path / "id_rsa", root / "README.md")
    model = NeuronModelForCausalLM.from_pretrained(root)
    with pytest.raises(ArtifactError, match=r"'README.md' points outside the artifact"):
        model.push_to_hub("org/leaky", token="hf_fake")
    assert "org/leaky" not in hub.repos
