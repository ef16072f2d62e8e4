"""Tiny tensor-parallel test models: llama, qwen3 (q/k norms), mistral (sliding window) and gemma3 (sandwich
(1 + weight) norms, sliding and global layers with their own rope tables) with 4 heads / 2 kv heads, and the export
shapes of tests/parallel."""

from __future__ import annotations

from pathlib import Path

import transformers
from support.tiny import TINY_LLAMA, export_tiny

SIZES = {k: v for k, v in TINY_LLAMA.items() if k != "tie_word_embeddings"}
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**SIZES, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**SIZES, tie_word_embeddings=False),
    "mistral": lambda: transformers.MistralConfig(**SIZES, sliding_window=6, tie_word_embeddings=False),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **SIZES, sliding_window=6, layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=20,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                         "full_attention": {"rope_type": "linear", "rope_theta": 1000.0, "factor": 8.0}},
        tie_word_embeddings=True),
}
# torch-export (no C++ compile: seconds), batch 3, three buckets, sub-batch decode graphs of 1 and 2 rows
TP_EXPORT = dict(batch_size=3, decode_batches=[1, 2], sequence_length=64, max_context_length=32,
                 context_buckets=[8, 16, 32], backend="torch-export")


def export_tp(checkpoint: Path, out: Path, tp: int, **options) -> Path:
    return export_tiny(checkpoint, out, **{**TP_EXPORT, "tensor_parallel_size": tp, **options})
