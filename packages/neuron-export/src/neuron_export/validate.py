"""Validate a fresh artifact with neuron-infer, against transformers' model of the checkpoint export has in memory.

Validation is a consumer of the artifact and lives in neuron-infer (`neuron_infer.validate`); neuron-export
only builds the reference model. neuron-infer is an optional extra (`neuron-export[validate]`), imported here
and only here: without it the export still completes, and says how to validate later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from neuron_export.errors import ValidationFailedError


def validate_with_neuron_infer(out: Path, hf_config: Any, hf_state: Mapping[str, torch.Tensor],
                               hf_model: torch.nn.Module | None, dtype: str, atol: float,
                               log: Callable[[str], None], output: str, model: str) -> float | None:
    """Max abs logit difference (raises ValidationFailedError above `atol`), or None when neuron-infer is missing."""
    try:
        from neuron_infer.validate import ValidationError, validate_artifact
    except ImportError:
        log("Validation skipped: neuron-infer is not installed (pip install 'neuron-export[validate]'); "
            f"validate with: neuron-infer validate {output} --model {model}")
        return None
    torch_dtype = getattr(torch, dtype)
    reference = hf_model.to(torch_dtype) if hf_model is not None else _reference_model(hf_config, hf_state, torch_dtype)
    try:
        return validate_artifact(out, reference, atol, log)
    except ValidationError as err:
        raise ValidationFailedError(str(err)) from None


def _reference_model(hf_config: Any, hf_state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    # eager: transformers' reference attention, the only one applying every feature (its sdpa ignores Gemma 2's
    # attention soft-capping)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation="eager")
    missing = model.load_state_dict(hf_state, strict=False).missing_keys
    if any(".experts." in k for k in missing):
        # Experts are saved one tensor per expert (the Hub's layout) but held fused, (experts, ...), in memory:
        # only from_pretrained's conversion maps them (load_state_dict skips them silently).
        model = type(model).from_pretrained(None, config=hf_config, state_dict=dict(hf_state), dtype=dtype,
                                            attn_implementation="eager")
    if getattr(hf_config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()
