"""neuron::linear_16bit: decode GEMVs on bfloat16/float16 weights near the memory bandwidth (linear_16bit.cpp).

Why a kernel of our own: decode multiplies a few rows by every weight once, so it is bound by reading the
weights, and torch's stock kernels fall short of the bandwidth there. Measured (bench/gemv_bench.py, AMD Zen4 with
AVX512-BF16, all 121 SmolLM2-135M linears = 269 MB, M = 1 / 4 / 8 rows): 2 threads on an idle machine (read
bandwidth 44 GB/s) 10.8 / 10.6 / 13.7 ms here against 16.8 / 15.6 / 17.9 with oneDNN on pre-packed weights and
24.8 / 26.6 / 30.3 with F.linear; 1 thread 15.6 / 17.1 / 22.3 against 22.7 / 21.0 / 28.5 and 37.9 / 41.2 / 46.0.
SmolLM2 bf16 decode (torch-aot, batch 1, 1 thread) ran 62-64 steps/s against 41-45 on packed weights.
The kernel reads each weight row as stored (nothing to repack or derive at load) for all rows of x at once.
AOTInductor calls it through its proxy executor: ~2 us per call including a 64x64 GEMV, so no C shim.

The artifact names the op and the vector path the export chose (`kernel_record`); the runtime builds and loads the
library before it loads graphs and refuses a host without that path's CPU features (`require`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neuron_infer.kernels.build import KernelUnavailable, load_library

OP = "neuron::linear_16bit"
SOURCE = Path(__file__).with_name("linear_16bit.cpp")
# CPU features each vector path executes (as /proc/cpuinfo names them), best path first.
PATH_FEATURES: dict[str, tuple[str, ...]] = {
    "avx512_bf16": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"),
    "avx2": ("avx2", "fma", "f16c"),
    "scalar": (),
}
DTYPES = (torch.bfloat16, torch.float16)
_faked = False


def load() -> None:
    """Build (first use) and load the op library; registers neuron::linear_16bit and its fake (for tracing)."""
    global _faked
    load_library(SOURCE, OP)
    if not _faked:
        torch.library.register_fake("neuron::linear_16bit")(_fake)
        torch.library.register_fake("neuron::linear_16bit_path")(_fake_path)
        _faked = True


def _fake(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    torch._check(x.dtype == w.dtype and x.dtype in DTYPES, lambda: f"{OP}: bfloat16/float16 x and w, got {x.dtype}, {w.dtype}")
    torch._check(x.shape[-1] == w.shape[1], lambda: f"{OP}: x [..., {x.shape[-1]}] against w {tuple(w.shape)}")
    return x.new_empty((*x.shape[:-1], w.shape[0]))


def _fake_path(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, path: str) -> torch.Tensor:
    return _fake(x, w, bias)


def host_paths(dtype: torch.dtype) -> list[str]:
    """The kernel's vector paths this CPU runs for `dtype`, best first (asks the built library's cpuid check)."""
    load()
    return list(torch.ops.neuron.linear_16bit_paths(dtype))


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, path: str | None = None) -> torch.Tensor:
    """x [..., K] @ w[N, K].T (+ bias) on the best path for this CPU, or on `path` (tests and benchmarks)."""
    if path is None:
        return torch.ops.neuron.linear_16bit(x, w, bias)
    return torch.ops.neuron.linear_16bit_path(x, w, bias, path)


def kernel_record(dtype: torch.dtype) -> dict[str, Any]:
    """What an artifact compiled with this op records in neuron_config.json metadata.kernels[OP]."""
    path = host_paths(dtype)[0]
    return {"dtype": str(dtype).removeprefix("torch."), "path": path, "cpu_features": list(PATH_FEATURES[path])}


def require(record: dict[str, Any], where: str) -> None:
    """Build/load the op an artifact records and check this CPU runs the path it was exported for."""
    try:
        load()
    except KernelUnavailable as e:
        raise KernelUnavailable(f"{where} decodes with {OP}, which cannot be built here: {e}") from e
    path, dtype = record.get("path"), getattr(torch, str(record.get("dtype")), None)
    if path not in PATH_FEATURES or dtype not in DTYPES:
        raise KernelUnavailable(f"{where}: neuron_config.json metadata.kernels['{OP}'] = {record!r} names no known "
                                f"path/dtype (paths {', '.join(PATH_FEATURES)}); upgrade neuron-infer or re-export")
    here = host_paths(dtype)
    if path not in here:
        missing = [f for f in PATH_FEATURES[path] if f not in _features_of(here[0])]
        raise KernelUnavailable(
            f"{where} was exported to decode with {OP} on its '{path}' path, which needs CPU features "
            f"{', '.join(missing) or ', '.join(PATH_FEATURES[path])} that this CPU lacks (its best path: '{here[0]}'). "
            "Re-export on this machine (or one like it), or with --no-gemv16"
        )


def _features_of(path: str) -> set[str]:
    return set(PATH_FEATURES[path])


def require_all(records: dict[str, Any], where: str) -> None:
    """`require` for every op in neuron_config.json metadata.kernels; an op this runtime does not know is refused."""
    for op, record in records.items():
        if op != OP or not isinstance(record, dict):
            raise KernelUnavailable(f"{where}: neuron_config.json metadata.kernels names op '{op}', which this "
                                    f"neuron-infer does not provide (it has {OP}); upgrade neuron-infer")
        require(record, where)
