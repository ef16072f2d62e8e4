"""Fixtures for neuron-infer: a tiny random Llama checkpoint and its exported artifact.

The artifact uses the export-only backend (torch.export without C++ compilation) so the runtime's
logic is tested in seconds; the really compiled backend is covered by the SmolLM2 tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers


def tiny_llama_config(**overrides) -> transformers.LlamaConfig:
    args = dict(vocab_size=160, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    args.update(overrides)
    return transformers.LlamaConfig(**args)


def make_checkpoint(path: Path, seed: int = 0, **overrides) -> Path:
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(tiny_llama_config(**overrides)).eval()
    with torch.no_grad():  # larger weights than the default init: less degenerate greedy text
        for p in model.parameters():
            p.normal_(0, 0.15)
    model.save_pretrained(path)
    return path


def export_artifact(checkpoint: Path, out: Path, **options) -> Path:
    from neuron_export.export import ExportOptions, export

    defaults = dict(batch_size=2, sequence_length=48, max_context_length=32, context_buckets=[8, 16, 32],
                    backend="torch-export")
    defaults.update(options)
    export(ExportOptions(model=str(checkpoint), output=str(out), **defaults), log=lambda _m: None)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_artifact(tiny_checkpoint, tmp_path_factory.mktemp("art") / "tiny-llama-artifact")


@pytest.fixture(scope="session")
def tiny_reference(tiny_checkpoint) -> transformers.LlamaForCausalLM:
    return transformers.LlamaForCausalLM.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="session")
def tiny_aot_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny model through the default torch-aot backend (native code): one slot, one bucket, two graphs.

    For what only compiled code can show: a native library in the artifact, pointer-bound constants, the
    CPU features recorded in the graph, AOTInductor's temporary directories.
    """
    return export_artifact(tiny_checkpoint, tmp_path_factory.mktemp("aot") / "tiny-llama-aot", backend="torch-aot",
                           batch_size=1, context_buckets=[16], max_context_length=16, sequence_length=32,
                           decode_batches=[])
