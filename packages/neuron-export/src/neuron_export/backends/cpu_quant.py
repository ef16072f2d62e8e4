"""The CPU kernels torch-aot compiles the quantized linears of models/quant.py with (target cpu).

- `Int8Linear` calls `aten._weight_int8pack_mm` itself; Inductor lowers it to a C shim call.
- `Int4Linear`: while a graph is traced (`applied`), its forward becomes `aten._weight_int4pack_mm_for_cpu` on a
  `packed_weight` constant in the kernel's CPU-specific layout (`aten._convert_weight_to_int4pack_for_cpu`).
  That layout is never stored: the artifact declares it in `weights.derived` (op `int4pack_cpu`, from the
  stored `qweight`) and the runtime computes it at load (neuron_infer/quant.py). At trace time the buffer holds
  the real packing, so the traced shapes are the kernel's. On exit the module is as it was.
- Inductor's lowering of that op turns the group size into a tensor constant of its own per call
  ("constant<N>"), which a package built with `package_constants_in_so=False` expects the loader to bind and no
  artifact holds. While such a graph compiles (`int4_as_fallback`), the op is an aten fallback instead (the
  package calls the kernel through AOTInductor's proxy executor, group size inline): measured at the same speed
  per call as the lowered kernel (73 vs 75 us, 1536x576, bf16, 1 thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch
from torch import nn

from neuron_export.models.quant import Int4Linear, unpack_nibbles

INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default
INT4_PACK_OP = "int4pack_cpu"  # neuron_cache.config.DERIVED_OPS
PACKED = "packed_weight"
INNER_K_TILES = 1  # the only value aten's CPU int4 packing takes


def kernel_layout(qweight: torch.Tensor) -> torch.Tensor:
    """aten's CPU int4 layout of a stored `qweight` (what neuron_infer.quant derives at load)."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_nibbles(qweight), INNER_K_TILES)


def _int4_modules(module: nn.Module) -> list[tuple[str, Int4Linear]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, Int4Linear)]


def derived(module: nn.Module) -> dict[str, dict[str, Any]]:
    """The constants `applied` makes the graph bind that the runtime derives at load: name -> {op, source, args}."""
    prefix = lambda name: f"{name}." if name else ""  # noqa: E731 (the module itself: no prefix)
    return {f"{prefix(name)}{PACKED}": {"op": INT4_PACK_OP, "source": f"{prefix(name)}qweight",
                                        "args": {"inner_k_tiles": INNER_K_TILES}} for name, _ in _int4_modules(module)}


@contextmanager
def applied(module: nn.Module) -> Iterator[dict[str, dict[str, Any]]]:
    """Trace `module` inside this block to compile its int4 linears with the CPU kernel; yields the derived constants."""
    swapped = _int4_modules(module)
    try:
        for _, m in swapped:
            m.register_buffer(PACKED, kernel_layout(m.qweight))
            m.forward = MethodType(_int4_forward, m)
        yield derived(module)
    finally:
        for _, m in swapped:
            m.__dict__.pop("forward", None)
            m._buffers.pop(PACKED, None)


def _int4_forward(self: Int4Linear, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, self.in_features)
    out = INT4_MM(flat, getattr(self, PACKED), self.group_size, self.scales_and_zeros)
    if self.bias is not None:
        out = out + self.bias
    return out.view(*x.shape[:-1], self.out_features)


@contextmanager
def int4_as_fallback(module: nn.Module) -> Iterator[None]:
    """Compile `module`'s int4 matmuls as aten fallbacks (see the module docstring); a no-op without them."""
    if not _int4_modules(module):
        yield
        return
    from torch._inductor import lowering

    saved = lowering.lowerings.pop(INT4_MM, None)
    lowering.make_fallback(INT4_MM)
    try:
        yield
    finally:
        lowering.lowerings.pop(INT4_MM, None)
        lowering.fallbacks.discard(INT4_MM)
        if saved is not None:
            lowering.lowerings[INT4_MM] = saved
