"""Optimizer steps under tp=2 / dp=2 (ZeRO-1) track the single-process run, and sharded checkpoints
consolidate back to the exact HF state dict that transformers loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from train_testlib import torchrun

from neuron_train.cli import main as cli

MODELS = ("llama", "qwen3", "granite")


@pytest.fixture(scope="module")
def train_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("train")
    torchrun("train_tiny.py", out, timeout=300)
    return out, torch.load(out / "train.pt")


@pytest.fixture(scope="module")
def tp_run(train_run) -> tuple[Path, dict]:
    return train_run[0], train_run[1]["tp"]


@pytest.fixture(scope="module")
def dp_run(train_run) -> dict:
    return train_run[1]["dp"]


def _consolidate(src: Path, dst: Path, *extra: str) -> Path:
    result = CliRunner().invoke(cli, ["consolidate", str(src), str(dst), *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return dst


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODELS)
def test_tp2_tracks_tp1_for_20_steps(tp_run, model_type: str) -> None:
    r = tp_run[1][model_type]
    (loss2, norm2, state2), (loss1, norm1, state1) = r["tp2"], r["tp1"]
    assert len(loss1) == len(loss2) == 20
    torch.testing.assert_close(torch.tensor(loss2), torch.tensor(loss1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(norm2), torch.tensor(norm1), atol=1e-5, rtol=1e-4)
    moved = max((state1[k] - r["initial"][k]).abs().max().item() for k in state1)
    assert moved > 1e-3, "training did not change the weights, so the comparison proves nothing"
    for k in state1:
        torch.testing.assert_close(state2[k], state1[k], atol=5e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.distributed
@pytest.mark.slow
def test_dp2_zero1_matches_dp1_with_doubled_batch(dp_run) -> None:
    (loss2, norm2, state2), (loss1, norm1, state1) = dp_run["llama"]["dp2"], dp_run["llama"]["dp1"]
    assert len(loss1) == len(loss2) == 12
    torch.testing.assert_close(torch.tensor(loss2), torch.tensor(loss1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(norm2), torch.tensor(norm1), atol=1e-5, rtol=1e-4)
    for k in state1:
        torch.testing.assert_close(state2[k], state1[k], atol=5e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODELS)
def test_consolidate_round_trips_exactly(tp_run, tmp_path: Path, model_type: str) -> None:
    from safetensors.torch import load_file

    out, results = tp_run
    initial = results[model_type]["initial"]
    dst = _consolidate(out / f"{model_type}_tp2" / "checkpoint-0", tmp_path / "hf")
    got = load_file(str(dst / "model.safetensors"))
    want = {k: v for k, v in initial.items() if not (k == "lm_head.weight" and "lm_head.weight" not in got)}
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), f"{k} differs after tp=2 shard + consolidate"


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODELS)
def test_consolidated_trained_checkpoint_loads_in_transformers(tp_run, tmp_path: Path, model_type: str) -> None:
    from transformers import AutoModelForCausalLM

    out, results = tp_run
    _, _, tp1_state = results[model_type]["tp1"]
    dst = _consolidate(out / f"{model_type}_tp2", tmp_path / "hf")  # the output dir: latest checkpoint
    model = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32)
    loaded = model.state_dict()
    for k, v in tp1_state.items():
        torch.testing.assert_close(loaded[k], v, atol=5e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
