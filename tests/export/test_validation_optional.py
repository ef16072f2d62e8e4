"""Validation runs in neuron-infer, an optional extra of neuron-export (`neuron-export[validate]`): without it an
export still writes the artifact, and says that it skipped validation and how to run it later."""

from __future__ import annotations

import sys
from pathlib import Path

from neuron_cache import NeuronConfig
from neuron_export.export import ExportOptions, export

SKIPPED = "Validation skipped: neuron-infer is not installed (pip install 'neuron-export[validate]'); validate with: "


def test_export_without_neuron_infer_skips_validation_and_writes_the_artifact(tiny_llama_dir: Path, tmp_path: Path,
                                                                               monkeypatch):
    monkeypatch.setitem(sys.modules, "neuron_infer.validate", None)  # `import neuron_infer.validate` raises ImportError
    out, logs = tmp_path / "out", []
    result = export(ExportOptions(model=str(tiny_llama_dir), output=str(out), batch_size=2, sequence_length=48,
                                  max_context_length=16, context_buckets=[16], backend="torch-export",
                                  disable_neuron_cache=True), log=logs.append)
    assert f"{SKIPPED}neuron-infer validate {out} --model {tiny_llama_dir}" in logs, logs
    assert result.validation_max_diff is None
    assert NeuronConfig.load(out).graphs, "the artifact is written all the same"


def test_export_with_neuron_infer_validates(tiny_llama_dir: Path, tmp_path: Path):
    """Control: the same export with neuron-infer importable validates, and logs no skip."""
    logs: list[str] = []
    result = export(ExportOptions(model=str(tiny_llama_dir), output=str(tmp_path / "out"), batch_size=2,
                                  sequence_length=48, max_context_length=16, context_buckets=[16],
                                  backend="torch-export", disable_neuron_cache=True), log=logs.append)
    assert result.validation_max_diff is not None and result.validation_max_diff <= 1e-3
    assert not any(line.startswith("Validation skipped") for line in logs)


def test_soft_capped_attention_validates_against_eager_transformers(tmp_path: Path):
    """Gemma 2 caps its attention scores in transformers' eager attention only (its sdpa ignores the cap, and is
    what from_config picks): the validation reference is eager, so a capped export validates."""
    import transformers
    from support.tiny import save_tiny_checkpoint

    config = transformers.Gemma2Config(vocab_size=151, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=24, sliding_window=6,
                                       query_pre_attn_scalar=20, attn_logit_softcapping=2.0, pad_token_id=None,
                                       max_position_embeddings=64)
    save_tiny_checkpoint(config, tmp_path / "ckpt", seed=3)
    result = export(ExportOptions(model=str(tmp_path / "ckpt"), output=str(tmp_path / "out"), batch_size=1,
                                  sequence_length=48, max_context_length=32, context_buckets=[32],
                                  backend="torch-export", disable_neuron_cache=True), log=lambda _m: None)
    assert result.validation_max_diff is not None and result.validation_max_diff <= 1e-3
