from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from engine_testlib import export_tiny, make_tiny_checkpoint, smollm2_tokenizer

from neuron_cache import Artifact
from neuron_infer import DecoderRuntime, NeuronModelForCausalLM
from neuron_infer.engine import Engine


@pytest.fixture(scope="session")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-smol", tokenizer)


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("art") / "tiny-smol-b2")


@pytest.fixture(scope="session")
def reference_model(tiny_checkpoint) -> transformers.LlamaForCausalLM:
    return transformers.LlamaForCausalLM.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="session")
def neuron_model(tiny_artifact) -> NeuronModelForCausalLM:
    return NeuronModelForCausalLM.from_pretrained(tiny_artifact)


@pytest.fixture(scope="module")
def runtime(tiny_artifact) -> DecoderRuntime:
    """One runtime (one KV cache) per test module."""
    return DecoderRuntime(Artifact.open(tiny_artifact))


@pytest.fixture
def engine(runtime, tokenizer) -> Engine:
    with Engine(runtime, tokenizer) as engine:
        yield engine
