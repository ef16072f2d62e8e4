"""Build a static encoder (or a decoder used for embeddings) from a Hugging Face config; bind a checkpoint."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from neuron_cache.arch.llama import Llama
from neuron_export.errors import MissingWeightsError, ShapeError
from neuron_export.models.encoders import encoder_family_for
from neuron_export.models.encoders.bert import Bert
from neuron_export.models.encoders.decoder_embed import DecoderEmbedModel
from neuron_export.models.encoders.model import EncoderModel, check_task

_LAYER = re.compile(r"^layers\.(\d+)\.")


def build_encoder(hf_config: Any, task: str, pooling: str | None, dtype: str,
                  sequence_length: int) -> tuple[type[Bert] | type[Llama], nn.Module]:
    """A model with uninitialised weights (bind_encoder_checkpoint fills them; a graph traced from it reads only
    their shapes). A decoder model type gives a DecoderEmbedModel (feature-extraction only)."""
    check_task(task, pooling)
    family = encoder_family_for(hf_config.model_type)
    torch_dtype = getattr(torch, dtype)
    if issubclass(family, Llama):
        return family, _build_decoder_embed(family, hf_config, task, pooling, dtype, sequence_length)
    arch = family.arch(hf_config, task)
    if sequence_length > arch.max_sequence_length:
        raise ShapeError(
            f"sequence_length {sequence_length} is above what {hf_config.model_type}'s position table holds "
            f"({arch.max_sequence_length}: max_position_embeddings {arch.max_position_embeddings} less "
            f"{arch.position_offset} padding rows); use a sequence_length of at most {arch.max_sequence_length}"
        )
    with torch.device("meta"):
        model = EncoderModel(family, arch, task, pooling, torch_dtype)
    # Built in the export dtype on meta: allocated once, untouched until the checkpoint is bound.
    model = model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gives every module its own tensor: tie again
    model.eval()
    return family, model


def _build_decoder_embed(family, hf_config, task, pooling, dtype, sequence_length) -> DecoderEmbedModel:
    from neuron_export.models.decoder import rope_tables

    if task != "feature-extraction":
        raise ValueError(
            f"task '{task}' with model_type '{hf_config.model_type}': a decoder checkpoint is exported here as an "
            "embedding model only; use task 'feature-extraction' (pooling 'last_token')"
        )
    arch = family.arch(hf_config)
    with torch.device("meta"):
        model = DecoderEmbedModel(arch, sequence_length, pooling, dtype)
    model = model.to(getattr(torch, dtype)).to_empty(device="cpu")
    cos, sin = rope_tables(hf_config, arch, sequence_length, getattr(torch, dtype))
    model.rope_cos.copy_(cos)
    model.rope_sin.copy_(sin)
    model.eval()
    return model


def bind_encoder_checkpoint(family: type[Bert] | type[Llama], model: nn.Module,
                            hf_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert `hf_state` by the family's CHECKPOINT data, cast to the model dtype, load it into `model`;
    returns the converted parameters (tied ones once, under their first name)."""
    if isinstance(model, DecoderEmbedModel):
        weights = _decoder_weights(family, model, hf_state)
    else:
        weights = _encoder_weights(family, model, hf_state)
    model.load_state_dict(weights, strict=False, assign=False)
    return weights


def _decoder_weights(family, model: DecoderEmbedModel, hf_state) -> dict[str, torch.Tensor]:
    from neuron_export.convert import convert_checkpoint

    # A causal LM file has model.* (and lm_head, never asked for); Qwen3Model/LlamaModel files have no prefix.
    if not any(k.startswith("model.") for k in hf_state):
        hf_state = {f"model.{k}": v for k, v in hf_state.items()}
    return convert_checkpoint(family, model, hf_state, model.rope_cos.dtype)


def _encoder_weights(family: type[Bert], model: EncoderModel, hf_state) -> dict[str, torch.Tensor]:
    prefix = f"{family.base_model_prefix}."
    p = prefix if any(k.startswith(prefix) for k in hf_state) else ""
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for name, param in model.named_parameters():
        match = _LAYER.match(name)
        template = _LAYER.sub("layers.{i}.", name, count=1) if match else name
        if template not in family.CHECKPOINT:
            raise KeyError(f"{family.__name__}.CHECKPOINT has no entry for parameter template '{template}'")
        sources = [s.format(p=p, i=match.group(1) if match else "") for s in family.CHECKPOINT[template]]
        absent = [s for s in sources if s not in hf_state]
        if absent:
            missing.extend(absent)
            continue
        tensor = torch.cat([hf_state[s] for s in sources]) if len(sources) > 1 else hf_state[sources[0]]
        if tensor.shape != param.shape:
            raise MissingWeightsError(
                f"checkpoint tensor(s) {sources} have shape {tuple(tensor.shape)}, but '{name}' needs "
                f"{tuple(param.shape)} from the config: the checkpoint does not match its config.json"
            )
        out[name] = tensor.detach().to(param.dtype).contiguous()
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MissingWeightsError(
            f"the checkpoint lacks {len(missing)} tensor(s) the {family.__name__} {model.task} model needs: {shown}. "
            "Check that the model directory holds all its *.safetensors shards and was saved for this task."
        )
    return out
