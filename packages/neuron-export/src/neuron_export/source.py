"""Where a model comes from: a Hub id, a local checkpoint directory, or a single .gguf file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuron_export.errors import CheckpointError, MissingWeightsError, one_line

_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


@dataclass(kw_only=True, slots=True)
class ModelSource:
    model_id: str  # what the user passed
    directory: Path  # local directory with config/tokenizer (and weights unless gguf)
    gguf_file: str | None = None
    revision: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def resolve(model: str, revision: str | None = None) -> ModelSource:
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CheckpointError(f"GGUF file {path} does not exist")
        return ModelSource(model_id=model, directory=path.parent, gguf_file=path.name)
    if path.is_dir():
        return ModelSource(model_id=model, directory=path)
    if path.exists() or model.startswith((".", "/")):
        raise CheckpointError(f"--model {model!r} is neither a directory, a .gguf file nor a Hub model id")
    from huggingface_hub import snapshot_download

    try:
        directory = snapshot_download(model, revision=revision, allow_patterns=_HUB_PATTERNS)
    except Exception as err:  # offline and not cached, unknown repo, no network...
        offline = " (HF_HUB_OFFLINE is set: only models already in the local HF cache can be used)" if os.environ.get(
            "HF_HUB_OFFLINE"
        ) else ""
        raise CheckpointError(f"could not get '{model}' from the Hugging Face Hub{offline}: {one_line(err)}") from err
    return ModelSource(model_id=model, directory=Path(directory), revision=revision)


def load_config(source: ModelSource, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            source.directory, gguf_file=source.gguf_file, trust_remote_code=trust_remote_code
        )
    except Exception as err:
        if source.is_gguf:
            raise CheckpointError(
                f"transformers cannot read the GGUF file {source.directory / source.gguf_file} ({one_line(err).rstrip('.')}). "
                "Only GGUF architectures and quantization types transformers supports can be exported; "
                "install the `gguf` package if it is missing."
            ) from err
        raise CheckpointError(
            f"cannot read {source.directory / 'config.json'} ({one_line(err).rstrip('.')}); fix the file, or "
            "re-download or re-save the checkpoint"
        ) from None


def load_gguf_model(source: ModelSource) -> torch.nn.Module:
    """Dequantize a GGUF checkpoint into a transformers model (float32)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source.directory, gguf_file=source.gguf_file).eval()
    except Exception as err:
        raise CheckpointError(
            f"transformers cannot load the GGUF file {source.directory / source.gguf_file}: {one_line(err)}"
        ) from err


def load_state_dict(source: ModelSource) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors checkpoint directory (one file or shards)."""
    from safetensors.torch import load_file

    files = sorted(source.directory.glob("*.safetensors"))
    if not files:
        raise MissingWeightsError(
            f"no *.safetensors weights in {source.directory}. Save the model with "
            "`model.save_pretrained(dir)` (safetensors) or pass a .gguf file."
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(file))
        except Exception as err:  # safetensors' SafetensorError (truncated, corrupt header), OSError
            raise CheckpointError(
                f"cannot read the weights file {file} ({one_line(err).rstrip('.')}): it is truncated or corrupted. "
                "Re-download the checkpoint, or re-save it with `model.save_pretrained(dir)`"
            ) from None
    return state


def load_tokenizer(source: ModelSource) -> Any | None:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file)
    except Exception:
        return None
