"""CPU kernels the torch-aot backend compiles into a graph: chosen by the backend, not by the model.

The shared model (`models/`) is plain `nn.Linear`s. While the torch-aot backend traces a graph for
target cpu, `applied` swaps the `forward` of those modules for one of two kernels, and undoes it when
the trace is done (so the weights written to the artifact never include what it added):

- Decode graphs on pre-packed weights. Decode multiplies a few rows (the batch) by every weight; stock
  `F.linear` is far from the memory bandwidth there, worse as the batch grows. oneDNN's linear on a
  weight reordered into its blocked layout (`mkldnn._reorder_linear_weight`, what Inductor itself uses
  for AOT on CPU) is up to 2-3x faster than both stock `F.linear` and MKL's packed GEMM (measured,
  SmolLM2 layer shapes, fp32, 2 threads, AVX2 AMD EPYC: 576->3072 at M=8: 275 vs 633 / 609 us; the
  49152-row lm_head at M=8: 6.7-8.3 vs 18-27 ms; equal or better at M=1).
  The reordered layout belongs to the oneDNN build and CPU that produce it and is an opaque tensor, so it
  is never stored: the graph calls `mkldnn._linear_pointwise` on a `packed_weight` constant (a dense
  placeholder at trace time), the artifact records how to derive it (`weights.derived`, what `applied`
  yields), and the runtime reorders the stored weight at load and binds the opaque tensor in its place.
- Prefill graphs in float32 from 16-bit weights. Prefill is compute-bound, and on CPUs without native
  bf16/fp16 dot products (no AVX512-BF16 / AMX, e.g. AVX2-only hosts) oneDNN emulates 16-bit GEMMs: 5x
  slower than float32 (19 vs 101 GFLOP/s, 128x576x1536). There prefill graphs upcast each weight and
  multiply in float32. The result equals a native 16-bit GEMM up to summation order (both accumulate in
  float32 and round the output once).
- Decode graphs in bfloat16/float16 on neuron-infer's `neuron::linear_16bit` (gemv16.py): instead of packing,
  where it beats oneDNN; the two are exclusive.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuron_export.backends import gemv16
from neuron_export.backends.base import KernelChoice
from neuron_export.errors import ExportError

PACK_OP = "onednn_packed_linear"
PACKED = "packed_weight"  # the buffer `applied` registers on each nn.Linear of a packed decode graph
LOW_PRECISION = ("bfloat16", "float16")
# Upcasting only pays off for real GEMMs: for a GEMV (lm_head on prefill's last token) converting the
# weight costs more than the emulated product.
UPCAST_MIN_ROWS = 16


def prepack_available(dtype: str) -> bool:
    """float32 anywhere oneDNN is; 16-bit only where this CPU multiplies it natively (AVX512-BF16, AMX,
    AVX512-FP16): oneDNN's emulated 16-bit path is slower than stock GEMV there.

    Measured (AMD Zen4, AVX512-BF16, 2 threads, SmolLM2-135M, every weight once per token): bf16 stock
    F.linear 21.7 ms, oneDNN-packed bf16 14.2 ms; fp32 50.7 vs 28.1 ms.
    """
    return torch.backends.mkldnn.is_available() and (dtype == "float32" or native_low_precision_gemm(dtype))


def native_low_precision_gemm(dtype: str) -> bool:
    """Whether this CPU multiplies `dtype` natively (oneDNN's own capability check)."""
    if dtype == "bfloat16":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == "float16":
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


def choose(dtype: str, prepack_weights: bool | None, prefill_upcast: bool | None,
           gemv16_asked: bool | None = None) -> KernelChoice:
    """The kernels for a cpu export: the user's explicit choice, else what pays off on this CPU."""
    if prepack_weights and gemv16_asked:
        raise ExportError("--prepack-weights and --gemv16 are two kernels for the same decode GEMVs; pass one")
    use_gemv16 = gemv16.choose(dtype, False if prepack_weights else gemv16_asked)
    if use_gemv16:
        prepack_weights = False
    available = prepack_available(dtype)
    if prepack_weights and not available:
        raise ExportError(
            f"--prepack-weights needs a oneDNN (mkldnn) build of torch and float32, or a 16-bit dtype this CPU "
            f"multiplies natively (got {dtype}, mkldnn {torch.backends.mkldnn.is_available()}, native "
            f"{native_low_precision_gemm(dtype)}); drop the flag"
        )
    if prefill_upcast is None:
        upcast = dtype in LOW_PRECISION and not native_low_precision_gemm(dtype)
    else:
        upcast = prefill_upcast and dtype in LOW_PRECISION
    return KernelChoice(prepacked_decode=available if prepack_weights is None else prepack_weights,
                        prefill_upcast=upcast, gemv16=use_gemv16)


def kernel_records(kernels: KernelChoice, dtype: str) -> dict[str, Any]:
    """The custom ops an export's graphs call, for neuron_config.json metadata.kernels (the runtime loads them)."""
    return gemv16.kernel_records(dtype) if kernels.gemv16 else {}


def pack(weight: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), batch)


def _linears(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]


def derived_constants(module: nn.Module, kernels: KernelChoice, role: str, batch_size: int) -> dict[str, dict[str, Any]]:
    """The constants a graph of `role` compiled with `kernels` binds that the runtime derives at load (never
    stored): name -> {op, source, args}. Known without tracing, so a graph served from the compile cache
    records them too."""
    if not (kernels.prepacked_decode and role == "token_generation"):
        return {}
    return {f"{name}.{PACKED}": {"op": PACK_OP, "source": f"{name}.weight", "args": {"batch_size": batch_size}}
            for name, _ in _linears(module)}


@contextmanager
def applied(module: nn.Module, kernels: KernelChoice, role: str, batch_size: int) -> Iterator[dict[str, dict[str, Any]]]:
    """Trace `module` inside this block to compile a graph of `role` with `kernels`; yields its derived constants.

    Packed weights serve the decode GEMVs only (they are packed for the batch size); float32 upcasting
    serves the prefill GEMMs only (decode is bandwidth-bound: 16-bit reads win). On exit every swapped
    module has its class's `forward` again and no `packed_weight` buffer.
    """
    swapped: list[nn.Linear] = []
    if kernels.gemv16 and role == "token_generation":
        gemv16.swap_in()
    try:
        for _, linear in _linears(module):
            if kernels.gemv16 and role == "token_generation" and gemv16.applies(linear):
                linear.forward = MethodType(gemv16.forward, linear)
            elif kernels.prepacked_decode and role == "token_generation":
                # A dense placeholder at trace time (_linear_pointwise accepts both); the opaque oneDNN tensor
                # is bound at load.
                linear.register_buffer(PACKED, torch.zeros_like(linear.weight))
                linear.forward = MethodType(_packed_forward, linear)
            elif kernels.prefill_upcast and role in ("context_encoding", "chunked_prefill"):
                linear.forward = MethodType(_upcast_forward, linear)
            else:
                continue
            swapped.append(linear)
        yield derived_constants(module, kernels, role, batch_size)
    finally:
        for linear in swapped:
            del linear.forward  # the instance attribute: nn.Linear.forward shows through again
            linear._buffers.pop(PACKED, None)


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, self.in_features)
    # (input, weight, bias, post-op "none", its scalars, algorithm). The scalars are unused for "none";
    # [None] rather than [] because torch.export cannot serialize an empty list of unknown type.
    out = torch.ops.mkldnn._linear_pointwise(flat, getattr(self, PACKED), self.bias, "none", [None], "")
    return out.view(*x.shape[:-1], self.out_features)


def _upcast_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float32 or x.numel() // self.in_features < UPCAST_MIN_ROWS:
        return F.linear(x, self.weight, self.bias)
    bias = None if self.bias is None else self.bias.float()
    return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)
