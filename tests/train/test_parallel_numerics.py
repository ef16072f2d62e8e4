"""tp=2 forward/backward (with and without sequence parallelism, with gradient checkpointing) equals
tp=1 and transformers' eager model on the same weights, for tiny llama, qwen3 and granite."""

from __future__ import annotations

import pytest
import torch
from train_testlib import torchrun

MODELS = ("llama", "qwen3", "granite")
VARIANTS = ("tp1", "tp2", "tp2_sp", "tp2_sp_gc")


@pytest.fixture(scope="module")
def numerics(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("numerics")
    torchrun("numerics.py", out, timeout=240)
    return {**{m: torch.load(out / f"numerics_{m}.pt") for m in MODELS}, "layers": torch.load(out / "layers.pt")}


@pytest.mark.distributed
@pytest.mark.slow
def test_parallel_layers_match_dense_ops(numerics) -> None:
    """Embedding -> ColumnParallel(gather_output) -> RowParallel(input_is_parallel=False) at tp=2
    equals the same dense computation, forward and backward (gather/scatter pairs' gradients)."""
    d = numerics["layers"]
    x = d["x"].clone().requires_grad_(True)
    w1 = d["w1"].clone().requires_grad_(True)
    h = torch.nn.functional.linear(x + torch.nn.functional.embedding(d["ids"], d["emb"]), w1, d["b1"])
    y = torch.nn.functional.linear(h, d["w2"], d["b2"])
    (y * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(d["y"], y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d["x_grad"], x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d["w1_grad"], w1.grad, atol=1e-5, rtol=1e-5)


def _assert_grads_close(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), f"{what}: parameter sets differ: {set(got) ^ set(want)}"
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, atol=2e-6, rtol=1e-4, msg=lambda m, n=name: f"{what} grad {n}: {m}")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_transformers(numerics, model_type: str, variant: str) -> None:
    hf, got = numerics[model_type]["hf"], numerics[model_type][variant]
    torch.testing.assert_close(got["loss"], hf["loss"], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got["logits"], hf["logits"], atol=5e-6, rtol=1e-5)
    _assert_grads_close(got["grads"], hf["grads"], f"{model_type}/{variant} vs transformers")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODELS)
@pytest.mark.parametrize("variant", ("tp2", "tp2_sp", "tp2_sp_gc"))
def test_tp2_matches_tp1(numerics, model_type: str, variant: str) -> None:
    ref, got = numerics[model_type]["tp1"], numerics[model_type][variant]
    torch.testing.assert_close(got["loss"], ref["loss"], atol=2e-6, rtol=1e-5)
    _assert_grads_close(got["grads"], ref["grads"], f"{model_type}/{variant} vs tp1")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODELS)
def test_sequence_parallel_on_equals_off(numerics, model_type: str) -> None:
    off, on = numerics[model_type]["tp2"], numerics[model_type]["tp2_sp"]
    torch.testing.assert_close(on["loss"], off["loss"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(on["logits"], off["logits"], atol=1e-6, rtol=1e-6)
    _assert_grads_close(on["grads"], off["grads"], f"{model_type} sp on vs off")
