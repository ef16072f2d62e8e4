"""Sharded checkpoints: what exact resume and consolidation need, one directory per step.

checkpoint-<step>/
  neuron_train.json            layout: model_type, tp, dp, LoRA config (rank 0)
  config.json, tokenizer*      the HF config and tokenizer, so consolidation is self-contained
  model-tp<r>.safetensors      TP rank r's parameters under training-model names (DP rank 0)
  optim-tp<r>.pt               optimizer (ZeRO-1 state gathered over DP first) + LR scheduler
  rng-rank<g>.pt               every process's Python / torch (/CUDA) RNG state
  trainer_state.json           step, batch-order position, log history (rank 0)

The .pt files hold only tensors and plain Python values (dicts, lists, tuples, numbers, strings,
None), so resume reads them with torch.load(weights_only=True): unpickling a checkpoint someone
else crafted can then run no code. A file holding anything else is refused, not loaded. Files
written by earlier versions hold the same values and load the same way.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer

from neuron_train.parallel.dims import ParallelDims

META = "neuron_train.json"
STATE = "trainer_state.json"
# 2: parameters named as the architecture description's CHECKPOINT keys (`layers.3.attn.qkv_proj.weight`);
# 1 (neuron-train 0.1 before the shared descriptions) used `model.layers.3.self_attn.qkv_proj.weight`.
FORMAT_VERSION = 2


def read_meta(path: Path) -> dict:
    """A checkpoint's neuron_train.json, refused (with the way out) when another format version wrote it."""
    meta = json.loads((path / META).read_text())
    found = meta.get("format_version")
    if found != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format_version={found!r}; this neuron-train reads format {FORMAT_VERSION} "
            "(its parameter names changed). Consolidate it with the neuron-train release that wrote it "
            "(`neuron-train consolidate`) and start from that Hugging Face checkpoint."
        )
    return meta


def _barrier(dims: ParallelDims) -> None:
    if dims.world_size > 1:
        dist.barrier()


def model_file(tp_rank: int) -> str:
    return f"model-tp{tp_rank:02d}.safetensors"


class UnsafeCheckpointError(ValueError):
    """A checkpoint .pt file holds objects that only a full (code-running) unpickle could rebuild."""


def _refusal(text: str) -> str:
    """The part of torch's multi-paragraph weights_only error that says what was refused."""
    if found := re.search(r"GLOBAL (\S+)", text):
        return f"it pickles {found.group(1)}"
    if found := re.search(r"^(Unsupported .*)$", text, re.MULTILINE):
        return f"the safe reader stopped at: {found.group(1)}"
    return "the safe reader refused it"


def load_plain(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers; anything else is refused unread."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        what = _refusal(str(err))
        raise UnsafeCheckpointError(
            f"{path} holds more than tensors and plain values ({what}); refusing to load it, because "
            "unpickling it could run code. Resume only from checkpoints written by neuron-train's "
            "save_checkpoint, or start the run without resume_from_checkpoint."
        ) from None


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    dims: ParallelDims,
    trainer_state: dict,
    tokenizer: Any = None,
) -> None:
    """Collective: every rank calls it."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)  # collective over DP; lands on DP rank 0
    if dims.dp_rank == 0:
        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters()}
        save_file(tensors, str(path / model_file(dims.tp_rank)), metadata={"format": "pt"})
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path / f"optim-tp{dims.tp_rank:02d}.pt")
    torch.save(
        {"python": random.getstate(), "torch": torch.get_rng_state(),
         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        path / f"rng-rank{dims.rank:04d}.pt",
    )
    if dims.is_main:
        lora = getattr(model, "lora_config", None)
        meta = {"format_version": FORMAT_VERSION, "model_type": model.config.model_type, "tp": dims.tp, "dp": dims.dp,
                "lora": lora.to_dict() if lora is not None else None}
        (path / META).write_text(json.dumps(meta, indent=1))
        (path / STATE).write_text(json.dumps(trainer_state, indent=1))
        model.config.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    _barrier(dims)


def load_checkpoint(
    path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, dims: ParallelDims
) -> dict:
    """Restore everything save_checkpoint wrote; returns the trainer state. The layout must match."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    if meta["tp"] != dims.tp or meta["dp"] != dims.dp:
        raise ValueError(
            f"checkpoint {path} was written with tensor_parallel_size={meta['tp']} and data-parallel size "
            f"{meta['dp']}; this run has {dims.tp} and {dims.dp}. Resume with the same layout, or consolidate "
            "it (`neuron-train consolidate`) and start a new run from the HF checkpoint."
        )
    tensors = load_file(str(path / model_file(dims.tp_rank)))
    params = dict(model.named_parameters())
    if set(tensors) != set(params):
        raise KeyError(f"{path / model_file(dims.tp_rank)} does not match the model: differing {sorted(set(tensors) ^ set(params))[:8]}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n])
    blob = load_plain(path / f"optim-tp{dims.tp_rank:02d}.pt")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    rng = load_plain(path / f"rng-rank{dims.rank:04d}.pt")
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / STATE).read_text())


def rotate_checkpoints(output_dir: Path, keep: int | None) -> None:
    if keep is None:
        return
    ckpts = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in ckpts[:-keep]:
        shutil.rmtree(old)
