"""neuron::linear_16bit (neuron_infer/kernels) against F.linear in float64, on every vector path this CPU runs.

Each path is forced by name (`kernels.linear(..., path=...)`); the tolerance is what one rounding of the output
to the 16-bit dtype allows (half an ulp) plus float32 accumulation, so a dropped K tail, a wrong row, a missing
bias or a double rounding fails. Shapes are odd (N 37, K 67 and 1029: no multiple of any vector width) and
M = 1..8 (one weight pass) plus 11 (two passes of at most 8 rows).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neuron_infer import kernels
from neuron_infer.kernels import build, gemv

DTYPES = {torch.bfloat16: 7, torch.float16: 10}  # explicit mantissa bits


@pytest.fixture(scope="module", autouse=True)
def library() -> None:
    kernels.load()


def cases() -> list[tuple[torch.dtype, str]]:
    kernels.load()
    return [(dtype, path) for dtype in DTYPES for path in kernels.host_paths(dtype)]


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """F.linear of the 16-bit inputs in float64, and the bound on |ours - it| per element."""
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    magnitude = F.linear(x.double().abs(), w.double().abs(), None if b is None else b.double().abs())
    bound = ref.abs() * 2.0 ** -DTYPES[x.dtype] + magnitude * 2.0 ** -20 + 1e-30
    return ref, bound


@pytest.mark.parametrize(("dtype", "path"), cases(), ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_every_path_matches_float64(dtype, path, bias):
    gen = torch.Generator().manual_seed(0)
    for k in (67, 1029):
        w = torch.randn(37, k, generator=gen).to(dtype)
        b = torch.randn(37, generator=gen).to(dtype) if bias else None
        for m in (*range(1, 9), 11):
            x = torch.randn(m, k, generator=gen).to(dtype)
            y = kernels.linear(x, w, b, path=path)
            ref, bound = reference(x, w, b)
            assert y.dtype == dtype and y.shape == (m, 37)
            excess = ((y.double() - ref).abs() - bound).max().item()
            assert excess <= 0, f"{path} {dtype} M={m} K={k}: off by {excess:.3g} beyond one rounding"


@pytest.mark.parametrize(("dtype", "path"), cases(), ids=lambda v: str(v).removeprefix("torch."))
def test_rows_split_over_threads(dtype, path):
    # 1001 rows of K=67 exceed one task's grain (~64 KiB of weights): ranges start mid-block on each thread.
    gen = torch.Generator().manual_seed(2)
    w, b = torch.randn(1001, 67, generator=gen).to(dtype), torch.randn(1001, generator=gen).to(dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(max(2, previous))
    try:
        for m in (1, 3, 8):
            x = torch.randn(m, 67, generator=gen).to(dtype)
            ref, bound = reference(x, w, b)
            excess = ((kernels.linear(x, w, b, path=path).double() - ref).abs() - bound).max().item()
            assert excess <= 0, f"{path} {dtype} M={m}: off by {excess:.3g} beyond one rounding"
    finally:
        torch.set_num_threads(previous)


def test_default_path_is_the_best_and_batches_leading_dims():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 45, generator=gen).to(torch.bfloat16)
    w = torch.randn(29, 45, generator=gen).to(torch.bfloat16)
    best = kernels.linear(x, w, path=kernels.host_paths(torch.bfloat16)[0])
    assert torch.equal(kernels.linear(x, w), best)
    assert torch.equal(best, torch.stack([kernels.linear(row, w) for row in x]))  # [2, 3, 29]: row by row


def test_refuses_what_it_cannot_multiply():
    w = torch.randn(8, 16, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="bfloat16 or float16, not Float"):
        kernels.linear(torch.randn(1, 16), w.float())
    with pytest.raises(RuntimeError, match=r"expected x \[\.\.\., K\] and w \[N, K\] of one dtype"):
        kernels.linear(torch.randn(1, 15, dtype=torch.bfloat16), w)
    with pytest.raises(RuntimeError, match=r"bias must be \[8\]"):
        kernels.linear(torch.randn(1, 16, dtype=torch.bfloat16), w, torch.zeros(7, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="unknown path 'avx9'"):
        kernels.linear(torch.randn(1, 16, dtype=torch.bfloat16), w, path="avx9")
    with pytest.raises(RuntimeError, match="path 'avx512_bf16' is not available for float16"):
        kernels.linear(torch.randn(1, 16, dtype=torch.half), w.half(), path="avx512_bf16")


def test_fake_impl_agrees_with_the_kernel():
    x, w, b = (torch.randn(3, 40, dtype=torch.bfloat16), torch.randn(24, 40, dtype=torch.bfloat16),
               torch.randn(24, dtype=torch.bfloat16))
    torch.library.opcheck(torch.ops.neuron.linear_16bit.default, (x, w, b),
                          test_utils=("test_schema", "test_faketensor"))


def test_cache_key_follows_source_torch_and_flags(tmp_path, monkeypatch):
    source = tmp_path / "op.cpp"
    source.write_text("// a\n")
    names = {build.library_name(source)}
    monkeypatch.setattr(build, "CFLAGS", (*build.CFLAGS, "-DX"))
    names.add(build.library_name(source))
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    names.add(build.library_name(source))
    source.write_text("// b\n")
    names.add(build.library_name(source))
    assert len(names) == 4


def test_no_compiler_is_a_clear_error(tmp_path, monkeypatch):
    source = tmp_path / "never_built.cpp"
    source.write_text(gemv.SOURCE.read_text() + "\n// not yet built\n")
    monkeypatch.setenv("NEURON_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(kernels.KernelUnavailable, match=r"neuron::linear_16bit .* no C\+\+ compiler "
                                                        r"\(.no-such-compiler-here."):
        build.load_library(source, gemv.OP)
