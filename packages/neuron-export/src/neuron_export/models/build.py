"""Build a static decoder from a Hugging Face config and bind a checkpoint to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from neuron_cache.arch.llama import Llama
from neuron_export.convert import convert_checkpoint
from neuron_export.models import family_for
from neuron_export.models.decoder import DecoderModel, rope_tables
from neuron_export.models.spec import StaticShapes


def build_decoder(hf_config: Any, shapes: StaticShapes) -> tuple[type[Llama], DecoderModel]:
    """A decoder with uninitialised weights (bind_checkpoint fills them; a graph traced from it reads only their
    shapes) and the rope tables and KV cache filled in."""
    family = family_for(hf_config.model_type)
    arch = family.arch(hf_config)
    dtype = getattr(torch, shapes.dtype)
    with torch.device("meta"):
        model = DecoderModel(arch, shapes)
    # Cast while on meta: allocated once, in the export dtype, and untouched until the checkpoint is bound.
    model = model.to(dtype).to_empty(device="cpu")
    if arch.tie_word_embeddings:  # to_empty gives every module its own tensor: tie again
        model.lm_head.weight = model.embed_tokens.weight
    for kind, (cos_table, sin_table) in zip(arch.rope_kinds, model.rope_buffers()):
        cos, sin = rope_tables(hf_config, arch, shapes.sequence_length, dtype, kind)
        cos_table.copy_(cos)
        sin_table.copy_(sin)
    model.reset_state()
    model.eval()
    return family, model


def bind_checkpoint(family: type[Llama], model: DecoderModel, hf_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert `hf_state` and load it into `model`; returns the converted parameters."""
    weights = convert_checkpoint(family, model, hf_state, model.rope_cos.dtype)
    model.load_state_dict(weights, strict=False, assign=False)
    return weights
