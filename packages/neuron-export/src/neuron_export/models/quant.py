"""Weight-only quantized linears that replace `nn.Linear` in a traced decoder (`neuron-export --quantize`).

The stored tensors are the canonical quantized weights (`neuron_cache.Quantization` documents them):

- `Int8Linear`: `qweight` int8 (out, in), `scales` (out,): y = x @ (qweight * scales).T, by
  `aten._weight_int8pack_mm` (x in bfloat16; the kernel is 10-30x slower on float32 activations).
- `Int4Linear`: `qweight` uint8 (out, in / 2), two 4-bit values a byte (low nibble first), `scales_and_zeros`
  (in / group, out, 2): w = (q - 8) * scale + zero, by `aten._weight_int4pack_mm_for_cpu`. That kernel reads
  the weight in a CPU-specific packed layout (`aten._convert_weight_to_int4pack_for_cpu`), which is never
  stored: the graph binds `packed_weight`, declared in `weights.derived` (op `int4pack_cpu`), and the runtime
  computes it from `qweight` at load. At trace time `packed_weight` holds the real packing, so the traced
  shapes are the kernel's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

INT4_PACK_OP = "int4pack_cpu"  # neuron_cache.config.DERIVED_OPS
PACKED = "packed_weight"
INNER_K_TILES = 1  # the only value aten's CPU int4 packing takes


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(out, in) values 0..15 -> (out, in / 2) uint8, element 2j in the low nibble of byte j."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_nibbles`: (out, in / 2) uint8 -> (out, in) int32 values 0..15."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).view(packed.shape[0], -1).to(torch.int32)


def int4_kernel_layout(qweight: torch.Tensor) -> torch.Tensor:
    """What the runtime derives at load (neuron_infer.quant): aten's CPU int4 layout of a stored `qweight`."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_nibbles(qweight), INNER_K_TILES)


class Int8Linear(nn.Module):
    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    def __init__(self, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape[0], qweight.shape[1] * 2
        self.group_size = group_size
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales_and_zeros", scales_and_zeros.contiguous())
        self.register_buffer(PACKED, int4_kernel_layout(qweight))  # derived at load, never stored
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, getattr(self, PACKED), self.group_size,
                                                          self.scales_and_zeros)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


QUANT_LINEARS = (Int8Linear, Int4Linear)


def quantized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANT_LINEARS)]


def derived_constants(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The constants of `model`'s quantized linears the runtime derives at load: name -> {op, source, args}."""
    return {f"{name}.{PACKED}": {"op": INT4_PACK_OP, "source": f"{name}.qweight",
                                 "args": {"inner_k_tiles": INNER_K_TILES}}
            for name, m in quantized_modules(model) if isinstance(m, Int4Linear)}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
