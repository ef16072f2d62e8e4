"""`neuron-export --quantize {int8,int4}`: weight-only quantization of every decoder linear and the lm_head.

- int8: symmetric, one scale per output channel (`aten._weight_int8pack_mm` takes no groups).
- int4: asymmetric, (scale, zero) per group of `--quant-group-size` input channels (default 32), aten's
  convention w = (q - 8) * scale + zero (`aten._weight_int4pack_mm_for_cpu`).
Scales are bfloat16 and the weights are quantized against the bf16-rounded scales, so dequantizing the stored
tensors gives exactly the weights the kernels multiply by. Embeddings and norms keep torch_dtype; a tied
lm_head gets its own quantized copy. Activations run in bfloat16: the kernels are 10-30x slower on float32
(`--torch_dtype auto` becomes bfloat16; float32/float16 are refused).

From a GGUF whose linears are Q4_0/Q4_1 (`--quantize int4`, group 32) the blocks are taken as they are
(gguf_quant.py); tensors in other GGUF types are dequantized and quantized again, and the log says which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuron_cache import Quantization
from neuron_cache.config import INT4_GROUP_SIZES
from neuron_export.errors import ExportError
from neuron_export.models.quant import Int4Linear, Int8Linear, pack_nibbles, replace_module, unpack_nibbles

METHODS = {"int8": "int8-weight-only", "int4": "int4-weight-only"}
SCALE_DTYPE = torch.bfloat16


# ---- options -----------------------------------------------------------------------------------------
def compute_dtype(quantize: str | None, requested: str, default: str) -> str:
    """The export dtype: bfloat16 for a quantized export (`auto` becomes it; anything else is refused)."""
    if quantize is None:
        return default
    if requested == "auto":
        return "bfloat16"
    if requested != "bfloat16":
        raise ExportError(f"--torch_dtype {requested} with --quantize {quantize}: quantized graphs run their "
                          "activations in bfloat16 (the int8/int4 CPU kernels are 10-30x slower on float32); use "
                          "--torch_dtype bfloat16 or auto")
    return requested


def check_options(quantize: str | None, group_size: int, backend: str, target: str, tp: int) -> None:
    if quantize is None:
        return
    if quantize not in METHODS:
        raise ExportError(f"--quantize {quantize}: not a quantization method; use one of {', '.join(METHODS)}")
    if backend != "torch-aot" or target != "cpu":
        raise ExportError(f"--quantize {quantize} compiles aten's CPU int8/int4 kernels: it needs --backend torch-aot "
                          f"--target cpu (got {backend}/{target})")
    if tp != 1:
        raise ExportError(f"--quantize {quantize} with --tensor_parallel_size {tp}: quantized tensors are not "
                          "sharded; use --tensor_parallel_size 1 or drop --quantize")
    if quantize == "int4" and group_size not in INT4_GROUP_SIZES:
        raise ExportError(f"--quant-group-size {group_size}: the int4 kernel takes groups of "
                          f"{', '.join(map(str, INT4_GROUP_SIZES))}; use 32 (the default)")


# ---- the quantizers (float -> canonical tensors) and their inverses ---------------------------------------
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> qweight int8 (out, in), scales bf16 (out,): symmetric, per output channel."""
    w = w.float()
    scales = (w.abs().amax(dim=1) / 127).to(SCALE_DTYPE)
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales.float()[:, None]


def int4_pair(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q (out, in) 0..15, scale and zero (out, in / g) -> stored (qweight (out, in / 2), scales_and_zeros)."""
    return pack_nibbles(q), torch.stack([scale.t(), zero.t()], dim=-1).to(SCALE_DTYPE).contiguous()


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> qweight uint8 (out, in / 2), scales_and_zeros bf16 (in / g, out, 2): asymmetric min/max
    per group, q = round((w - zero) / scale) + 8 against the bf16-rounded scale and zero."""
    out, k = w.shape
    if k % group_size:
        raise ExportError(f"a ({out}, {k}) weight does not split into groups of {group_size} input channels; "
                          "choose a --quant-group-size that divides it")
    g = w.float().view(out, k // group_size, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).to(SCALE_DTYPE).float()
    scale = torch.where(scale == 0, torch.full_like(scale, 1e-6), scale)
    zero = (lo + 8 * scale).to(SCALE_DTYPE).float()
    q = (torch.round((g - zero[..., None]) / scale[..., None]) + 8).clamp(0, 15).view(out, k)
    return int4_pair(q, scale, zero)


def dequantize_int4(qweight: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    q = unpack_nibbles(qweight).float()
    out, k = q.shape
    groups = scales_and_zeros.shape[0]
    scale, zero = scales_and_zeros.float().permute(1, 0, 2).unbind(-1)  # (out, groups) each
    return ((q.view(out, groups, -1) - 8) * scale[..., None] + zero[..., None]).view(out, k)


def dequantize(module: nn.Module) -> torch.Tensor:
    """The float32 weight a quantized linear multiplies by."""
    if isinstance(module, Int8Linear):
        return dequantize_int8(module.qweight, module.scales)
    return dequantize_int4(module.qweight, module.scales_and_zeros)


# ---- the model ---------------------------------------------------------------------------------------
def _fused_sources(family: Any, name: str) -> list[str]:
    """HF weight names fused (concatenated along the rows) into our linear `name`."""
    from neuron_export.convert import _template

    template, fmt = _template(f"{name}.weight")
    return [s.format(**fmt) for s in family.CHECKPOINT[template]]


def quantize_model(model: nn.Module, family: Any, quantize: str, group_size: int, *,
                   gguf_file: Path | None = None, hf_config: Any = None,
                   log: Callable[[str], None] = print) -> Quantization:
    """Replace every nn.Linear of `model` (its weights bound) by its quantized module; returns the record.

    With `gguf_file` and int4 at group 32, weights stored as Q4_0/Q4_1 blocks are taken as they are."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    direct, types = {}, {}
    if gguf_file is not None and quantize == "int4" and group_size == 32:
        from neuron_export.gguf_quant import read_int4_blocks

        wanted = [s for n, _ in linears for s in _fused_sources(family, n)]
        direct, types = read_int4_blocks(gguf_file, hf_config, wanted)
    elif gguf_file is not None:
        log(f"GGUF blocks are not taken directly with --quantize {quantize} --quant-group-size {group_size} (only "
            "Q4_0/Q4_1 for int4 at group 32 map exactly; Q8_0's per-32 scales do not fit the per-channel int8 "
            "kernel): every weight is dequantized, then quantized again")
    requantized: list[str] = []
    for name, linear in linears:
        sources = _fused_sources(family, name)
        blocks = [direct.get(s) for s in sources]
        if all(b is not None for b in blocks):
            q = torch.cat([b.q for b in blocks])
            qweight, sz = int4_pair(q, torch.cat([b.scale for b in blocks]), torch.cat([b.zero for b in blocks]))
            new: nn.Module = Int4Linear(qweight, sz, group_size, linear.bias)
        else:
            if gguf_file is not None:
                requantized.append(name)
                if direct or types:
                    found = ", ".join(f"{s}: {types.get(s, 'absent')}" for s in sources)
                    log(f"{name}: GGUF type not taken directly ({found}): dequantized, then quantized to {quantize}")
            if quantize == "int8":
                new = Int8Linear(*quantize_int8(linear.weight.detach()), linear.bias)
            else:
                new = Int4Linear(*quantize_int4(linear.weight.detach(), group_size), group_size, linear.bias)
        replace_module(model, name, new)
    ggml = sorted({b.ggml_type for b in direct.values()})
    source = f"gguf:{'+'.join(ggml)}" if ggml else "export"
    if source == "export":
        requantized = []
    record = Quantization(method=METHODS[quantize], bits=8 if quantize == "int8" else 4,
                          group_size=group_size if quantize == "int4" else None, scale_dtype="bfloat16",
                          modules=[n for n, _ in linears], source=source, requantized=requantized)
    model.quantization = record  # read by export's cache key and graph signature (`graph_fields`)
    log(f"Quantized {len(linears)} linears to {record.method} ({source}"
        f"{f', {len(requantized)} requantized' if requantized else ''})")
    return record


def graph_fields(model: nn.Module) -> dict[str, Any]:
    """{'quantization': ...} for a graph's cache key and static signature (None when not quantized)."""
    record = getattr(model, "quantization", None)
    return {"quantization": None if record is None else record.graph_fields()}


# ---- the reference (validation): transformers on the dequantized weights ---------------------------------
def dequantized_hf_weights(model: nn.Module, family: Any, hf_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF weight name -> the float32 weight the artifact's kernels multiply by (fused linears split back)."""
    from neuron_export.models.quant import quantized_modules

    out = {}
    for name, module in quantized_modules(model):
        sources = _fused_sources(family, name)
        if len(sources) == 1:  # (a tied lm_head has no tensor of its own in hf_state)
            out[sources[0]] = dequantize(module)
            continue
        sizes = [hf_state[s].shape[0] for s in sources]
        out.update(zip(sources, dequantize(module).split(sizes)))
    return out


def reference_model(hf_config: Any, hf_state: Mapping[str, torch.Tensor], hf_model: nn.Module | None,
                    weights: Mapping[str, torch.Tensor]) -> nn.Module:
    """transformers' model of the checkpoint with `weights` (dequantized) in place of its linears; a tied
    lm_head is untied (the embedding keeps its 16-bit values, the head its quantized ones)."""
    if hf_model is None:
        from transformers import AutoModelForCausalLM

        hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
        hf_model.load_state_dict(dict(hf_state), strict=False)
        if getattr(hf_config, "tie_word_embeddings", False):
            hf_model.tie_weights()
    with torch.no_grad():
        for name, w in weights.items():
            if name == "lm_head.weight":
                hf_model.lm_head.weight = nn.Parameter(w.clone().to(hf_model.lm_head.weight.dtype), requires_grad=False)
            else:
                hf_model.get_parameter(name).copy_(w)
    hf_model.config.tie_word_embeddings = False
    return hf_model.eval()
