"""qwen3_moe fine-tuning at tp=2 (routed experts split by their hidden dimension, replicated router, the
router load-balancing loss) against transformers' Qwen3MoeForCausalLM, and consolidation back to the
per-expert checkpoint transformers loads. The worker (workers/moe.py) runs once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def moe(moe_run: Path) -> dict:
    return torch.load(moe_run / "moe.pt")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["plain", "gc"])
def test_loss_and_gradients_match_transformers(moe, variant: str) -> None:
    ours, hf = moe["ours"], moe["hf"]
    assert hf["aux_loss"] > 0.5, "the load-balancing loss must weigh in for this test to see it"
    torch.testing.assert_close(ours["loss"], hf["loss"], atol=2e-6, rtol=1e-5)
    got = ours["grads"][variant]
    assert set(got) == set(hf["grads"])
    assert any(".experts.5.gate_proj." in k for k in hf["grads"]), "per-expert checkpoint names expected"
    for name, want in hf["grads"].items():
        torch.testing.assert_close(got[name], want, atol=2e-6, rtol=1e-4, msg=lambda m, n=name: f"{variant} grad {n}: {m}")


@pytest.mark.distributed
@pytest.mark.slow
def test_training_tracks_transformers(moe, moe_run: Path) -> None:
    ours, hf = moe["ours"], moe["hf"]
    assert ours["losses"] == pytest.approx(hf["losses"], abs=2e-5)
    assert hf["losses"][-1] < hf["losses"][0] - 0.3, "the steps must move the model"
    trained = load_file(str(moe_run / "hf_trained" / "model.safetensors"))
    assert set(ours["trained"]) == set(trained)
    for name, want in trained.items():
        # Adam normalises each element's gradient: tiny gradients' rounding moves weights by up to ~1e-5.
        torch.testing.assert_close(ours["trained"][name], want, atol=1e-4, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(ours["logits"], hf["logits"], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def consolidated(moe_run: Path, tmp_path_factory) -> Path:
    from neuron_train.consolidate import consolidate

    return consolidate(moe_run / "run", tmp_path_factory.mktemp("moe_hf") / "hf")


@pytest.mark.distributed
@pytest.mark.slow
def test_consolidation_round_trips_through_transformers(moe, moe_run: Path, consolidated: Path) -> None:
    from transformers import AutoModelForCausalLM

    written = load_file(str(consolidated / "model.safetensors"))
    base = load_file(str(moe_run / "base" / "model.safetensors"))
    assert set(written) == set(base), "consolidation must write the checkpoint layout save_pretrained writes"
    model = AutoModelForCausalLM.from_pretrained(consolidated, dtype=torch.float32).eval()
    assert model.config.model_type == "qwen3_moe"
    with torch.no_grad():
        logits = model(input_ids=moe["probe"]).logits
    torch.testing.assert_close(logits, moe["ours"]["logits"], atol=1e-5, rtol=1e-5)
