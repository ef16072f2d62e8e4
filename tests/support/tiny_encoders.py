"""What the neuron-infer encoder tests compare with: transformers' eager model of a checkpoint, and the checkpoint's
artifact at the tests' shapes (batch buckets [1, 4], sequence buckets [16, 32], torch-export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

# task -> transformers' Auto class: the eager model every artifact output is compared with
AUTO_CLASSES = {"feature-extraction": "AutoModel", "fill-mask": "AutoModelForMaskedLM",
                "text-classification": "AutoModelForSequenceClassification",
                "token-classification": "AutoModelForTokenClassification",
                "question-answering": "AutoModelForQuestionAnswering"}


def reference(directory: Path, task: str) -> torch.nn.Module:
    """transformers' eager float32 model of the checkpoint: what the artifact's outputs are compared with."""
    cls = getattr(transformers, AUTO_CLASSES[task])
    return cls.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()


def encoder_artifact(checkpoint: Path, out: Path, **options: Any) -> Path:
    """The checkpoint's artifact (its task from the checkpoint): batch 4 in buckets [1, 4], sequence 32 in [16, 32]."""
    from support.encoders import export_encoder

    return export_encoder(checkpoint, out, **{"task": "auto", "batch_size": 4, "batch_buckets": [1, 4],
                                               "sequence_length": 32, "context_buckets": [16, 32], **options})
