"""Fixtures for tests/engine; the tokenizer, the tiny SmolLM2-vocabulary checkpoint and its artifact come from
tests/support/fixtures.py (one per test session)."""

from __future__ import annotations

import pytest
import transformers

from neuron_cache import Artifact
from neuron_infer import DecoderRuntime, NeuronModelForCausalLM
from neuron_infer.engine import Engine


@pytest.fixture(scope="session")
def reference_model(tiny_reference) -> transformers.LlamaForCausalLM:
    return tiny_reference


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
