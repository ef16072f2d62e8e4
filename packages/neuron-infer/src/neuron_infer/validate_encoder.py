"""Validate an encoder artifact against transformers' eager model of its checkpoint: every compiled (rows, bucket)
graph runs once on a right-padded batch of mixed lengths, and every output is compared on the real tokens.

neuron-export calls this at the end of an encoder export (before the artifact is moved into place); it is also the
`neuron-infer validate` path for encoder artifacts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from neuron_cache import Artifact
from neuron_cache.config import VALIDATION_ATOL
from neuron_infer.validate import ValidationError

# task -> the transformers Auto class whose outputs the artifact's graphs reproduce
REFERENCE_CLASSES = {"feature-extraction": "AutoModel", "sentence-similarity": "AutoModel",
                     "fill-mask": "AutoModelForMaskedLM", "text-classification": "AutoModelForSequenceClassification",
                     "token-classification": "AutoModelForTokenClassification",
                     "question-answering": "AutoModelForQuestionAnswering"}
_PER_TOKEN = ("last_hidden_state", "start_logits", "end_logits")


def validate_encoder_artifact(root: Path, checkpoint: Path, atol: float | None = None,
                              log: Callable[[str], None] = print) -> float:
    """Max abs difference over every graph and output; raises ValidationError above `atol` (None: the dtype's
    default)."""
    from neuron_infer import EncoderRuntime

    runtime = EncoderRuntime(Artifact.open(Path(root)))
    config = runtime.config
    atol = VALIDATION_ATOL[config.torch_dtype] if atol is None else atol
    reference = reference_model(checkpoint, config.task)
    vocab = int(reference.config.vocab_size)
    worst = 0.0
    for name, graph in config.graphs.items():
        ids, mask = _batch(graph.rows, graph.bucket, vocab, reference.config)
        ours = runtime.run(**_inputs(runtime.input_names, ids, mask))
        with torch.no_grad():
            theirs = reference(**_inputs(runtime.input_names, ids, mask))
        for out, value in ours.items():
            want = pooled(theirs.last_hidden_state, mask, config.pooling.mode) if out == "sentence_embedding" else \
                theirs[out]
            real = mask.bool() if (value.dim() == 3 or out in _PER_TOKEN) else torch.ones(value.shape[0], dtype=torch.bool)
            diff = float((value[real].float() - want[real].float()).abs().max())
            if not diff <= atol:  # (NaN fails too)
                raise ValidationError(f"graph {name}: output '{out}' differs from transformers' {type(reference).__name__} "
                                      f"by {diff:.3g} (atol {atol})")
            worst = max(worst, diff)
    log(f"Validated {len(config.graphs)} encoder graph(s) against transformers: max abs difference {worst:.2e} "
        f"(atol {atol})")
    return worst


def reference_model(checkpoint: Path, task: str) -> torch.nn.Module:
    import transformers

    cls = getattr(transformers, REFERENCE_CLASSES[task])
    return cls.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager").eval()


def pooled(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """sentence-transformers' Pooling of `hidden` (rows, seq, dim) over the real tokens of `mask` (rows, seq)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, -1e9).max(dim=1).values
    if mode == "last_token":
        return hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
    total, count = (hidden * m).sum(1), m.sum(1).clamp(min=1e-9)
    return total / count if mode == "mean" else total / count.sqrt()


def _batch(rows: int, bucket: int, vocab: int, hf_config) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` rows whose longest is `bucket` tokens (so the graph of this bucket runs), the others shorter; ids
    avoid the pad token, which RoBERTa-style position ids treat specially."""
    lengths = [max(1, bucket - (bucket * r) // (rows + 1)) for r in range(rows)]
    ids = (torch.arange(rows * bucket).view(rows, bucket) * 7919 + 13) % vocab
    pad = getattr(hf_config, "pad_token_id", None)
    if pad is not None:
        ids = torch.where(ids == pad, (ids + 1) % vocab, ids)
    mask = (torch.arange(bucket)[None] < torch.tensor(lengths)[:, None]).long()
    return ids * mask + (pad or 0) * (1 - mask), mask


def _inputs(names: list[str], ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs
