"""How torch-aot compiles the quantized linears of models/quant.py for target cpu.

- `aten._weight_int8pack_mm` compiles as Inductor lowers it (a C shim call).
- `aten._weight_int4pack_mm_for_cpu`: Inductor's lowering turns the group size into a tensor constant of its
  own per call ("constant<N>"), which a package built with `package_constants_in_so=False` expects the loader
  to bind, and which no artifact holds. While a quantized graph compiles, the op is a fallback instead (the
  package calls the aten kernel through AOTInductor's proxy executor, group size inline): measured the same
  speed per call as the lowered kernel (73 vs 75 us, 1536x576, bf16, 1 thread).
- The int4 kernel's packed weight is derived at load (models/quant.py `derived_constants`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from neuron_export.models.quant import Int4Linear, derived_constants, quantized_modules

INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default


def derived(module: nn.Module) -> dict[str, dict[str, Any]]:
    return derived_constants(module)


@contextmanager
def int4_as_fallback(module: nn.Module) -> Iterator[None]:
    """Compile `module`'s int4 matmuls as aten fallbacks (see the module docstring); a no-op without them."""
    if not any(isinstance(m, Int4Linear) for _, m in quantized_modules(module)):
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
