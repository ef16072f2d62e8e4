"""Session fixtures for the tiny Llama with SmolLM2's vocabulary (49152), shared by tests/engine and tests/vllm:
one checkpoint and one artifact per test session. The vocabulary is SmolLM2's so that stop strings,
detokenization and vLLM's text serving run on a real tokenizer; everything else is tiny.

Loaded for the whole suite by tests/conftest.py; a directory that wants another tiny model under the same names
(tests/infer) overrides `tiny_checkpoint`, `tiny_artifact` and `tiny_reference` together in its conftest.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from support.smollm2 import smollm2_tokenizer

    return smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer) -> Path:
    from support.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-smol", tokenizer=tokenizer,
                                max_position_embeddings=256)


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    from support.tiny import export_tiny

    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("art") / "tiny-smol-b2")


@pytest.fixture(scope="session")
def tiny_reference(tiny_checkpoint):
    import transformers

    return transformers.LlamaForCausalLM.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="session")
def tiny_tp2_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint at tensor_parallel_size 2, compiled with torch-aot: AOTInductor packages with the
    all-reduces and the all-gather inside, run by two rank processes (tests/parallel, tests/vllm)."""
    from support.tiny import export_tiny

    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("art") / "tiny-smol-tp2", backend="torch-aot",
                       tensor_parallel_size=2)


@pytest.fixture(scope="session")
def minilm_artifact(tmp_path_factory) -> Path:
    """The real all-MiniLM-L6-v2 (a sentence-transformers folder: mean pooling, Normalize) compiled with torch-aot:
    batch buckets 1 and 32, sequence buckets 32 and 128 (4 graphs). Shared by tests/infer and tests/vllm."""
    from support.encoders import export_encoder, minilm_dir

    return export_encoder(minilm_dir(), tmp_path_factory.mktemp("art") / "minilm", backend="torch-aot",
                          batch_size=32, batch_buckets=[1, 32], sequence_length=128, context_buckets=[32, 128],
                          compile_workers=None)
