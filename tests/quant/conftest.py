"""Session fixtures for tests/quant: one tiny Llama and its int8 and int4 torch-aot artifacts (2 graphs each)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from support.tiny import make_tiny_checkpoint

# Tied embeddings (as SmolLM2: the lm_head gets its own quantized copy); intermediate 128 so that every
# linear's input splits into int4 groups of 32.
QUANT_LLAMA = dict(intermediate_size=128, tie_word_embeddings=True)
QUANT_EXPORT = dict(batch_size=1, sequence_length=64, max_context_length=16, context_buckets=[16],
                    backend="torch-aot")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def quant_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("quant_ckpt"), seed=3, **QUANT_LLAMA)


@pytest.fixture(scope="session")
def quant_artifacts(quant_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """{"int8": path, "int4": path}, exported (and validated by export) once per session."""
    from neuron_export.export import ExportOptions, export

    root = tmp_path_factory.mktemp("quant_artifacts")
    out = {}
    for method in ("int8", "int4"):
        result = export(ExportOptions(model=str(quant_checkpoint), output=str(root / method), quantize=method,
                                      **QUANT_EXPORT), log=lambda _m: None)
        # Same shapes, same session cache: the int4 graphs must not be served the int8 ones (the key holds
        # the quantization). Three graphs: prompt bucket 16, token generation, chunked prefill 16 (the default).
        assert result.cache_stats.get("compiles") == 3, result.cache_stats
        out[method] = root / method
    return out
