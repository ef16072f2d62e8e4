"""Training models by HF `model_type`, and loading from a checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from neuron_train.models.decoder import DecoderForTraining, TrainOutput
from neuron_train.models.derive import UnsupportedArchitectureError, describe, training_plan
from neuron_train.parallel.dims import ParallelDims

__all__ = [
    "DecoderForTraining", "TrainOutput", "UnsupportedArchitectureError", "build_model", "load_hf_state_dict",
    "model_class", "training_plan",
]


def model_class(config: PretrainedConfig) -> type[DecoderForTraining]:
    """The training model for `config`: one class for every described family, checked up front (an unknown
    model_type or an unimplemented DecoderArch feature raises here, naming the field)."""
    describe(config)
    return DecoderForTraining


def load_hf_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors checkpoint directory (single file or sharded with an index)."""
    from safetensors.torch import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(
            f"{path} holds no model.safetensors or model.safetensors.index.json; save the model with "
            "`save_pretrained(..., safe_serialization=True)` first."
        )
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(path / f)))
    return out


def build_model(
    path: str | Path,
    dims: ParallelDims,
    *,
    sequence_parallel: bool = False,
    gradient_checkpointing: bool = False,
    device: str | torch.device | None = None,
) -> DecoderForTraining:
    """The training model for the HF checkpoint at `path`, with this rank's shards loaded.

    `device` defaults to this process's CUDA device under nccl, else CPU.
    """
    config = AutoConfig.from_pretrained(path)
    model = model_class(config)(config, dims, sequence_parallel=sequence_parallel, gradient_checkpointing=gradient_checkpointing)
    model.load_hf_state_dict(load_hf_state_dict(path))
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return model.to(device) if device is not None else model
