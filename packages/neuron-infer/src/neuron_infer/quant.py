"""Quantized artifacts (`neuron_config.json` `quantization`): what the runtime checks and derives at load.

The stored int4 weight is canonical (uint8, two 4-bit values a byte, low nibble first: neuron_cache.Quantization);
the graphs multiply with `aten._weight_int4pack_mm_for_cpu`, which reads a CPU-specific packed layout. That
layout is computed here at load (`weights.derived` op `int4pack_cpu`), never stored. Nothing from
neuron-export is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neuron_cache import ArtifactError, NeuronConfig

# The aten kernels each method's graphs call.
KERNELS = {
    "int8-weight-only": ("_weight_int8pack_mm",),
    "int4-weight-only": ("_weight_int4pack_mm_for_cpu", "_convert_weight_to_int4pack_for_cpu"),
}


def check_quantized(config: NeuronConfig, root: Path) -> None:
    """Refuse a quantized artifact this torch/CPU cannot run, by name (the CPU ISA is checked by the runtime)."""
    q = config.quantization
    if q is None:
        return
    if config.target.device != "cpu":
        raise RuntimeError(f"{root} is quantized ({q.method}) for target '{config.target.device}'; quantized graphs "
                           "run on cpu only. Re-export with --target cpu.")
    missing = [op for op in KERNELS[q.method] if not hasattr(torch.ops.aten, op)]
    if missing:
        raise RuntimeError(f"{root} is quantized ({q.method}) and its graphs call aten.{', aten.'.join(missing)}, "
                           f"which this torch ({torch.__version__}) lacks; install torch=={config.target.torch_version}")


ALIGNMENT = 64  # bytes; what torch's CPU allocator gives


def align_quantized(config: NeuronConfig, constants: dict[str, torch.Tensor]) -> None:
    """Copy the quantized modules' tensors that a weights file left at an unaligned address.

    safetensors places tensors at arbitrary byte offsets, and `aten._weight_int8pack_mm` reads its scales with
    aligned vector loads: a (128,) bf16 scale 40 bytes past a 64-byte boundary crashed it (segmentation fault,
    torch 2.13.0, AVX512). These tensors are small; only misaligned ones are copied.
    """
    if config.quantization is None:
        return
    modules = set(config.quantization.modules)
    for name, tensor in constants.items():
        if name.rpartition(".")[0] in modules and tensor.data_ptr() % ALIGNMENT:
            constants[name] = tensor.clone()


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).view(packed.shape[0], -1).to(torch.int32)


def int4pack_cpu(qweight: torch.Tensor, args: dict[str, Any], name: str) -> torch.Tensor:
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ArtifactError(f"neuron_config.json weights.derived.{name}: its source must be a 2-d uint8 int4 weight, "
                            f"found {list(qweight.shape)} {qweight.dtype}; re-export the model")
    tiles = args.get("inner_k_tiles", 1)
    if tiles != 1:
        raise ArtifactError(f"neuron_config.json weights.derived.{name}.args.inner_k_tiles = {tiles!r}: aten's CPU "
                            "int4 packing takes 1; re-export the model")
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(_unpack_nibbles(qweight), tiles)


# weights.derived ops of quantized artifacts: (source tensor, args, constant name) -> derived tensor.
DERIVED = {"int4pack_cpu": int4pack_cpu}
