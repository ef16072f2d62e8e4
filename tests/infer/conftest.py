"""Fixtures for neuron-infer: a tiny random Llama checkpoint (vocabulary 160, no tokenizer) and its exported artifact.

The artifact uses the export-only backend (torch.export without C++ compilation) so the runtime's
logic is tested in seconds; the really compiled backend is covered by the SmolLM2 tests. These fixtures
override the SmolLM2-vocabulary ones of tests/support/fixtures.py under the same names, all three together.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from support.tiny import export_tiny, make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("art") / "tiny-llama-artifact", sequence_length=48)


@pytest.fixture(scope="session")
def tiny_reference(tiny_checkpoint) -> transformers.LlamaForCausalLM:
    return transformers.LlamaForCausalLM.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="session")
def tiny_aot_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny model through the default torch-aot backend (native code): one slot, one bucket, two graphs.

    For what only compiled code can show: a native library in the artifact, pointer-bound constants, the
    CPU features recorded in the graph, AOTInductor's temporary directories.
    """
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("aot") / "tiny-llama-aot", backend="torch-aot",
                       batch_size=1, context_buckets=[16], max_context_length=16, sequence_length=32,
                       decode_batches=[], chunk_buckets=[])
