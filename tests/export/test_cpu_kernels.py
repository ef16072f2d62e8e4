"""The CPU kernels are the torch-aot backend's choice, applied while a graph is traced, never the model's.

- the shared model definition (`neuron_export/models/`) names no oneDNN op;
- `cpu_kernels.applied` swaps the kernels in for one trace and leaves the module exactly as it was;
- which backend and target choose which kernels.
End-to-end numerics of the packed and upcast graphs: test_prepacked.py and test_low_precision.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import neuron_export.models
from neuron_export.backends import KernelChoice, cpu_kernels, gemv16, get_backend
from neuron_export.errors import ExportError

PACKED = KernelChoice(prepacked_decode=True)
UPCAST = KernelChoice(prefill_upcast=True)


def test_models_name_no_onednn_op():
    root = Path(neuron_export.models.__file__).parent
    pattern = re.compile(r"mkldnn|onednn|mkl\b|_linear_pointwise|packed_weight|reorder_linear", re.IGNORECASE)
    hits = [f"{f.name}:{n}" for f in sorted(root.glob("*.py"))
            for n, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == [], f"backend kernels in the shared model: {hits}"


class Tiny(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.up = nn.Linear(8, 24, dtype=dtype)
        self.down = nn.Linear(24, 8, bias=False, dtype=dtype)
        self.register_buffer("scale", torch.full((8,), 0.5, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x))) * self.scale


def snapshot(module: nn.Module) -> tuple[list, list, list]:
    return ([(n, b.shape) for n, b in module.named_buffers()], [n for n, _ in module.named_parameters()],
            [m.forward.__func__ for m in module.modules()])


def ops(module: nn.Module, x: torch.Tensor) -> list:
    with torch.no_grad():
        ep = torch.export.export(module, (x,), strict=False)
    return [n.target for n in ep.graph.nodes if n.op == "call_function"]


def test_packed_decode_is_applied_for_the_trace_only():
    module = Tiny().eval()
    x = torch.randn(2, 8)
    before, expected = snapshot(module), module(x)
    with cpu_kernels.applied(module, PACKED, "token_generation", batch_size=2) as derived:
        assert derived == {f"{n}.packed_weight": {"op": "onednn_packed_linear", "source": f"{n}.weight",
                                                  "args": {"batch_size": 2}} for n in ("up", "down")}
        assert {n for n, _ in module.named_buffers()} == {"scale", "up.packed_weight", "down.packed_weight"}
        assert ops(module, x).count(torch.ops.mkldnn._linear_pointwise.default) == 2
        # The placeholder is dense; bound to the real weights, the kernel computes the same product.
        module.up.packed_weight.copy_(module.up.weight)
        module.down.packed_weight.copy_(module.down.weight)
        torch.testing.assert_close(module(x), expected)
    assert snapshot(module) == before
    assert torch.ops.mkldnn._linear_pointwise.default not in ops(module, x)
    assert torch.equal(module(x), expected)


def test_kernels_follow_the_role():
    module = Tiny().eval()
    with cpu_kernels.applied(module, PACKED, "context_encoding", batch_size=2) as derived:
        assert derived == {} and "up.packed_weight" not in dict(module.named_buffers())
    with cpu_kernels.applied(module, UPCAST, "token_generation", batch_size=2) as derived:
        assert derived == {} and "forward" not in vars(module.up)


def test_upcast_prefill_multiplies_in_float32_and_is_undone():
    module = Tiny(torch.bfloat16).eval()
    rows = torch.randn(cpu_kernels.UPCAST_MIN_ROWS, 8, dtype=torch.bfloat16)
    before = snapshot(module)
    with cpu_kernels.applied(module, UPCAST, "context_encoding", batch_size=1) as derived:
        assert derived == {}
        with torch.no_grad():
            ep = torch.export.export(module, (rows,), strict=False)
        dtypes = [n.args[0].meta["val"].dtype for n in ep.graph.nodes if n.target is torch.ops.aten.linear.default]
        assert dtypes == [torch.float32, torch.float32]
        one_row = torch.export.export(module, (rows[:1],), strict=False)  # a GEMV is cheaper without the upcast
        assert {n.args[0].meta["val"].dtype for n in one_row.graph.nodes
                if n.target is torch.ops.aten.linear.default} == {torch.bfloat16}
    assert snapshot(module) == before


def test_applied_undoes_itself_when_the_trace_fails():
    module = Tiny().eval()
    before = snapshot(module)
    with pytest.raises(RuntimeError, match="trace failed"):
        with cpu_kernels.applied(module, PACKED, "token_generation", batch_size=1):
            raise RuntimeError("trace failed")
    assert snapshot(module) == before and "forward" not in vars(module.up)


def test_only_torch_aot_on_cpu_chooses_kernels():
    aot, exported = get_backend("torch-aot"), get_backend("torch-export")
    assert aot.choose_kernels("cpu", "float32", prepack_weights=None, prefill_upcast=None).prepacked_decode == \
        torch.backends.mkldnn.is_available()
    native = cpu_kernels.native_low_precision_gemm("bfloat16")
    bf16 = aot.choose_kernels("cpu", "bfloat16", prepack_weights=None, prefill_upcast=None)
    # 16-bit decode packs only where the CPU multiplies it natively (else oneDNN emulates it, slower than GEMV).
    # ... unless neuron::linear_16bit beats oneDNN on this CPU (backends/gemv16.py; test_gemv16_export.py).
    gemv = gemv16.choose("bfloat16", None)
    assert bf16 == KernelChoice(prepacked_decode=native and torch.backends.mkldnn.is_available() and not gemv,
                                prefill_upcast=not native, gemv16=gemv)
    assert aot.choose_kernels("cpu", "float32", prepack_weights=False, prefill_upcast=True) == KernelChoice()
    for backend, target in ((exported, "cpu"), (aot, "cuda")):
        assert backend.choose_kernels(target, "bfloat16", prepack_weights=None, prefill_upcast=None) == KernelChoice()
        with pytest.raises(ExportError, match=f"--prefill-upcast: backend {backend.name} \\(target {target}\\)"):
            backend.choose_kernels(target, "bfloat16", prepack_weights=None, prefill_upcast=True)
    if not native:
        with pytest.raises(ExportError, match=r"--prepack-weights needs a oneDNN .* and float32, or a 16-bit dtype"):
            aot.choose_kernels("cpu", "bfloat16", prepack_weights=True, prefill_upcast=None)
