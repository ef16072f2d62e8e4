"""Weight-only quantized linears that replace `nn.Linear` in a traced decoder (`neuron-export --quantize`).

The stored tensors are the canonical quantized weights (`neuron_cache.Quantization` documents them):

- `Int8Linear`: `qweight` int8 (out, in), `scales` (out,): y = x @ (qweight * scales).T, by aten's
  `_weight_int8pack_mm` (x in bfloat16; on CPU the kernel is 10-30x slower on float32 activations).
- `Int4Linear`: `qweight` uint8 (out, in / 2), two 4-bit values a byte (low nibble first), `scales_and_zeros`
  (in / group, out, 2): w = (q - 8) * scale + zero. Its own forward dequantizes in the graph (portable, slow);
  a backend swaps in its kernel while it traces (torch-aot on cpu: backends/cpu_quant.py, aten's int4 CPU
  kernel on a layout derived at load).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(out, in) values 0..15 -> (out, in / 2) uint8, element 2j in the low nibble of byte j."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_nibbles`: (out, in / 2) uint8 -> (out, in) int32 values 0..15."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).view(packed.shape[0], -1).to(torch.int32)


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
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = unpack_nibbles(self.qweight).view(self.out_features, -1, self.group_size).to(x.dtype) - 8
        scale, zero = self.scales_and_zeros.to(x.dtype).transpose(0, 1).unbind(-1)  # (out, groups) each
        w = (q * scale[..., None] + zero[..., None]).view(self.out_features, self.in_features)
        return F.linear(x, w, self.bias)


QUANT_LINEARS = (Int8Linear, Int4Linear)


def quantized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANT_LINEARS)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
