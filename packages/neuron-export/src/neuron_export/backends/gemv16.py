"""16-bit decode GEMVs on neuron-infer's `neuron::linear_16bit` (a torch op built from C++ by neuron-infer).

Decode reads every weight once per token for a few rows (the batch), so it runs at the memory bandwidth of the
weight reads, and stock kernels fall short of it in 16 bits (numbers in neuron_infer/kernels/gemv.py and
bench/gemv_bench.py). The kernel reads the weights as stored, so it needs no derived constants; the graph calls
the op through AOTInductor's proxy executor, and the artifact records the op and the vector path chosen here
(metadata.kernels), which the runtime builds, loads and checks before it loads a graph.

neuron-infer is imported lazily, only when this kernel is chosen (neuron-export's optional dependency).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from neuron_export.errors import ExportError

DTYPES = ("bfloat16", "float16")
# (dtype, the kernel's best vector path on this CPU) where it measurably beats the stock alternative at decode
# batches 1-8 (bench/gemv_bench.py, AMD Zen4, 2 threads): oneDNN on packed weights for bfloat16, stock F.linear for
# float16 (oneDNN packs only what the CPU multiplies natively). A pair not listed was not measured: off by default.
PAYS_OFF = {("bfloat16", "avx512_bf16"), ("float16", "avx512")}
# CPUs with these run oneDNN's 16-bit GEMMs on AMX tiles, not measured against this kernel: off by default there.
UNMEASURED_FLAGS = ("amx_bf16", "amx_fp16")


def cpu_flags() -> set[str]:
    """This CPU's feature flags as Linux names them (empty where /proc/cpuinfo is not there)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def pays_off(dtype: str, path: str) -> bool:
    return (dtype, path) in PAYS_OFF and not cpu_flags() & set(UNMEASURED_FLAGS)


def _kernels() -> Any:
    try:
        from neuron_infer import kernels
    except ImportError as e:
        raise ExportError("--gemv16 runs neuron-infer's kernel: pip install 'neuron-export[validate]' (neuron-infer), "
                          "or export with --no-gemv16") from e
    return kernels


def best_path(dtype: str) -> str:
    """The kernel's best path for `dtype` on this CPU; builds the kernel at first use (ExportError if it cannot)."""
    kernels = _kernels()
    try:
        return kernels.host_paths(getattr(torch, dtype))[0]
    except kernels.KernelUnavailable as e:
        raise ExportError(f"--gemv16: {e}") from e


def choose(dtype: str, asked: bool | None) -> bool:
    """Whether decode graphs call the kernel: the user's explicit choice, else where it pays off on this CPU."""
    if asked is False or dtype not in DTYPES:
        if asked:
            raise ExportError(f"--gemv16 multiplies bfloat16 or float16 weights, not {dtype}; drop the flag or pass "
                              "--torch_dtype bfloat16")
        return False
    if asked:
        best_path(dtype)  # builds it now (once, before compile workers start), or refuses
        return True
    try:
        return pays_off(dtype, best_path(dtype))
    except ExportError:
        return False  # no compiler or no neuron-infer: the stock kernels


def applies(module: nn.Linear) -> bool:
    return module.weight.dtype in (torch.bfloat16, torch.float16)


def swap_in() -> None:
    """Register the op (and its fake, for tracing) in this process before a graph that calls it is traced."""
    _kernels().load()


def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.neuron.linear_16bit(x, self.weight, self.bias)


def kernel_records(dtype: str) -> dict[str, Any]:
    """neuron_config.json metadata.kernels for an export whose decode graphs call the kernel."""
    kernels = _kernels()
    return {kernels.LINEAR_16BIT_OP: kernels.kernel_record(getattr(torch, dtype))}
