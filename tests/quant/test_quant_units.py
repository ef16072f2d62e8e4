"""The quantizers, the stored format, the kernels on it, the runtime's derived layout, and option errors."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from neuron_export.backends.cpu_quant import applied, kernel_layout
from neuron_export.cli import main
from neuron_export.errors import ExportError
from neuron_export.models.quant import Int4Linear, Int8Linear, pack_nibbles, unpack_nibbles
from neuron_export.quantize import (
    check_options,
    compute_dtype,
    dequantize,
    dequantize_int4,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
)
from neuron_infer import quant as infer_quant


@pytest.fixture
def weight() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(96, 128, generator=gen) * 0.1 + torch.randn(96, 1, generator=gen) * 0.05).to(torch.bfloat16)


def test_int8_error_is_at_most_half_a_step(weight):
    q, scales = quantize_int8(weight)
    assert q.dtype == torch.int8 and scales.dtype == torch.bfloat16 and scales.shape == (96,)
    err = (dequantize_int8(q, scales) - weight.float()).abs()
    assert (err <= scales.float()[:, None] / 2 + 1e-6).all()
    assert int(q.abs().max()) <= 127


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_error_is_at_most_half_a_step_plus_the_zero_rounding(weight, group):
    qweight, sz = quantize_int4(weight, group)
    assert qweight.shape == (96, 64) and qweight.dtype == torch.uint8 and sz.shape == (128 // group, 96, 2)
    err = (dequantize_int4(qweight, sz) - weight.float()).abs()
    step = sz[..., 0].float().t().repeat_interleave(group, dim=1)
    assert (err <= step * 0.5 + 1e-6).all()  # q is chosen against the bf16 zero: the rounding is absorbed
    # groups of 32 fit better than one group over the row
    if group == 32:
        coarse = dequantize_int4(*quantize_int4(weight, 128)) - weight.float()
        assert err.mean() < coarse.abs().mean()


def test_nibbles_round_trip_low_first():
    q = torch.randint(0, 16, (8, 64), dtype=torch.int32)
    packed = pack_nibbles(q)
    assert torch.equal(unpack_nibbles(packed), q)
    assert int(packed[0, 0]) == int(q[0, 0]) | (int(q[0, 1]) << 4)


def test_runtime_derives_the_layout_export_traced_with(weight):
    qweight, _ = quantize_int4(weight, 32)
    derived = infer_quant.int4pack_cpu(qweight, {"inner_k_tiles": 1}, "x.packed_weight")
    assert torch.equal(derived, kernel_layout(qweight))
    with pytest.raises(Exception, match="inner_k_tiles = 2"):
        infer_quant.int4pack_cpu(qweight, {"inner_k_tiles": 2}, "x.packed_weight")
    with pytest.raises(Exception, match="2-d uint8"):
        infer_quant.int4pack_cpu(qweight.to(torch.int8), {}, "x.packed_weight")


@pytest.mark.parametrize(("kind", "group"), [("int8", None), ("int4", 32), ("int4", 128)])
def test_kernels_multiply_by_the_dequantized_weight(weight, kind, group):
    bias = torch.randn(96).to(torch.bfloat16)
    module = (Int8Linear(*quantize_int8(weight), bias) if kind == "int8"
              else Int4Linear(*quantize_int4(weight, group), group, bias))
    x = torch.randn(2, 5, 128).to(torch.bfloat16)
    want = x.float() @ dequantize(module).t() + bias.float()
    outputs = [module(x)]  # int8: aten's kernel; int4: the model's portable dequantize + linear
    with applied(module) as derived:  # int4: the CPU kernel torch-aot traces (no-op for int8)
        outputs.append(module(x))
    assert set(derived) == ({"packed_weight"} if kind == "int4" else set())
    assert "packed_weight" not in dict(module.named_buffers()) and "forward" not in module.__dict__
    for got in outputs:
        assert got.shape == (2, 5, 96) and got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=0.02, atol=0.02)


def test_float32_activations_are_refused_with_the_fix():
    assert compute_dtype("int4", "auto", "float32") == "bfloat16"
    assert compute_dtype(None, "float32", "float32") == "float32"
    with pytest.raises(ExportError, match=r"--torch_dtype float32 with --quantize int8.*use --torch_dtype bfloat16"):
        compute_dtype("int8", "float32", "float32")


@pytest.mark.parametrize(("args", "message"), [
    (("int8", 32, "torch-export", "cpu", 1), "needs --backend torch-aot --target cpu"),
    (("int4", 32, "torch-aot", "cpu", 2), "quantized tensors are not sharded"),
    (("int4", 48, "torch-aot", "cpu", 1), "--quant-group-size 48"),
    (("fp8", 32, "torch-aot", "cpu", 1), "--quantize fp8"),
])
def test_unsupported_options_are_refused(args, message):
    with pytest.raises(ExportError, match=message):
        check_options(*args)


def test_cli_offers_quantize():
    result = CliRunner().invoke(main, ["--help"])
    assert "--quantize [int8|int4]" in result.output and "--quant-group-size" in result.output
    bad = CliRunner().invoke(main, ["-m", "x", "--quantize", "int3", "out"])
    assert bad.exit_code == 2 and "int3" in bad.output


def test_runtime_derive_constants_runs_the_int4_op_and_names_a_missing_source(weight):
    from types import SimpleNamespace

    from neuron_cache import ArtifactError, DerivedTensor
    from neuron_infer.runtime import derive_constants

    qweight, _ = quantize_int4(weight, 32)
    spec = DerivedTensor(op="int4pack_cpu", source="lm_head.qweight", args={"inner_k_tiles": 1})
    config = SimpleNamespace(weights=SimpleNamespace(derived={"lm_head.packed_weight": spec}))
    constants = {"lm_head.qweight": qweight}
    derive_constants(config, constants)
    assert torch.equal(constants["lm_head.packed_weight"], kernel_layout(qweight))
    with pytest.raises(ArtifactError, match=r"derives from 'lm_head\.qweight', which no weights file holds"):
        derive_constants(config, {})
