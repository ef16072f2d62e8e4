"""Encoder exports: the task and pooling read from the checkpoint, one graph per (rows, bucket), validation against
transformers inside the export (a wrong graph fails it), and refusals that name the option and write nothing.

Numerics of the artifacts at run time (model classes, pipelines, encode, real MiniLM weights) are in
tests/infer/test_encoders*.py; these tests export with the torch-export backend (same graphs, no C++ compile).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.encoders import export_encoder, make_tiny_encoder, make_tiny_sentence_transformers

from neuron_cache import NeuronConfig
from neuron_export.errors import (
    CheckpointError,
    ExportError,
    ShapeError,
    UnsupportedArchitectureError,
    ValidationFailedError,
)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("enc-ckpt")
    return {"st": make_tiny_sentence_transformers(root / "st", pooling="cls", normalize=True),
            "mlm": make_tiny_encoder(root / "mlm", "bert", "fill-mask"),
            "roberta-tc": make_tiny_encoder(root / "roberta-tc", "roberta", "token-classification")}


@pytest.mark.parametrize(("model_type", "task"), [
    ("bert", "fill-mask"), ("bert", "text-classification"), ("bert", "question-answering"),
    ("roberta", "token-classification"), ("xlm-roberta", "text-classification"), ("distilbert", "fill-mask"),
    ("mpnet", "feature-extraction"),
])
def test_the_task_comes_from_the_checkpoint_and_validates_against_transformers(tmp_path, model_type, task):
    ckpt = make_tiny_encoder(tmp_path / "ckpt", model_type, task)
    out = export_encoder(ckpt, tmp_path / "art", batch_buckets=[1, 4])  # validation runs inside export()
    config = NeuronConfig.load(out)
    assert (config.task, config.model_type, config.pooling) == (task, model_type, None)
    assert sorted(config.graphs) == sorted(f"encoder_b{r}_s{b}" for r in (1, 4) for b in (16, 32))
    inputs = [t.name for t in config.graphs["encoder_b4_s32"].inputs]
    assert inputs == ["input_ids", "attention_mask", *(["token_type_ids"] if model_type == "bert" else [])]
    assert (out / "vocab.txt").is_file() and (out / "config.json").is_file()


def test_a_sentence_transformers_folder_exports_its_pooling_and_normalization(tiny_dirs, tmp_path):
    out = export_encoder(tiny_dirs["st"], tmp_path / "art")
    config = NeuronConfig.load(out)
    assert config.task == "feature-extraction"
    assert (config.pooling.mode, config.pooling.normalize) == ("cls", True)
    assert config.metadata["max_seq_length"] == 64
    assert [t.name for t in config.graphs["encoder_b4_s32"].outputs] == ["last_hidden_state", "sentence_embedding"]
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 64


def test_pooling_can_be_asked_for_a_plain_encoder(tiny_dirs, tmp_path):
    out = export_encoder(tiny_dirs["mlm"], tmp_path / "art", task="feature-extraction", pooling="mean")
    config = NeuronConfig.load(out)
    assert (config.task, config.pooling.mode, config.pooling.normalize) == ("feature-extraction", "mean", False)


def test_a_wrong_graph_fails_validation_and_writes_nothing(tiny_dirs, tmp_path, monkeypatch):
    """The export's validation compares with transformers: a perturbed weight must fail it (the check can fail)."""
    import neuron_export.models.encoders.build as encoders

    bind = encoders.bind_encoder_checkpoint

    def perturbed(family, model, hf_state):
        import torch

        out = bind(family, model, hf_state)
        weight = next(p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2 and ".1." in n)
        # noise, not a constant: a constant shift of a projection fed by LayerNorm (zero-mean rows) changes nothing
        weight.data.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
        return out

    monkeypatch.setattr(encoders, "bind_encoder_checkpoint", perturbed)
    with pytest.raises(ValidationFailedError, match="differs from transformers"):
        export_encoder(tiny_dirs["mlm"], tmp_path / "art")
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"batch_buckets": [1, 2]}, ShapeError, "ending at --batch_size (4)"),
    ({"kv_buckets": [16]}, ShapeError, "--kv_buckets: decoder options"),
    ({"context_buckets": [16]}, ShapeError, "must end at --sequence_length (32)"),
    ({"sequence_length": 4096, "context_buckets": [4096]}, ShapeError, "4096"),
    ({"task": "fill-mask", "pooling": "mean"}, ExportError, "pooling applies to --task feature-extraction"),
    ({"task": "feature-extraction", "pooling": "last_token"}, ExportError, "use cls or mean"),
    ({"task": "summarization"}, ExportError, "summarization"),
])
def test_impossible_options_are_refused_by_name(tiny_dirs, tmp_path, options, error, message):
    with pytest.raises(error, match=None) as caught:
        export_encoder(tiny_dirs["mlm"], tmp_path / "art", **options)
    assert message in str(caught.value)
    assert not (tmp_path / "art").exists()


def _st_variant(src: Path, dst: Path, modules=None, pooling=None) -> Path:
    import shutil

    shutil.copytree(src, dst)
    if modules is not None:
        (dst / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (dst / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return dst


TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
POOL = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}


@pytest.mark.parametrize(("modules", "pooling", "error", "message"), [
    ([TRANSFORMER, POOL, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}],
     None, UnsupportedArchitectureError, "['Transformer', 'Pooling', 'Dense']"),
    ([{**TRANSFORMER, "path": "../../etc"}, POOL], None, CheckpointError, "which leaves"),
    (None, {"pooling_mode_weightedmean_tokens": True}, UnsupportedArchitectureError, "weightedmean"),
    (None, {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, UnsupportedArchitectureError,
     "exactly one of"),
    ({"not": "a list"}, None, CheckpointError, "expected a list of module objects"),
])
def test_a_sentence_transformers_folder_it_cannot_reproduce_is_refused(tiny_dirs, tmp_path, modules, pooling, error,
                                                                       message):
    folder = _st_variant(tiny_dirs["st"], tmp_path / "st", modules, pooling)
    with pytest.raises(error) as caught:
        export_encoder(folder, tmp_path / "art")
    assert message in str(caught.value)
    assert not (tmp_path / "art").exists()


def test_decoder_options_stay_with_decoders(tiny_llama_dir, tmp_path):
    with pytest.raises(ExportError, match="apply to encoder exports"):
        export_encoder(tiny_llama_dir, tmp_path / "art", batch_buckets=[1, 4])


def test_the_cli_exports_an_encoder_and_says_how(tiny_dirs, tmp_path):
    from neuron_export.cli import main

    result = CliRunner().invoke(main, ["-m", str(tiny_dirs["roberta-tc"]), "--backend", "torch-export",
                                       "--batch_size", "2", "--batch_buckets", "1,2", "--sequence_length", "16",
                                       "--compile-workers", "0", str(tmp_path / "art")])
    assert result.exit_code == 0, result.output
    assert "for token-classification" in result.output and "Validated 2 encoder graph(s)" in result.output
    assert NeuronConfig.load(tmp_path / "art").batch_buckets == [1, 2]


@pytest.mark.parametrize("saved_as", ["Qwen3Model", "Qwen3ForCausalLM"])
def test_a_decoder_exports_as_an_embedder_with_last_token_pooling(tmp_path, saved_as):
    """The Qwen3-Embedding recipe: a bare Qwen3Model exports as feature-extraction by itself; a causal LM when asked.
    Validation inside export compares every graph with transformers' Qwen3Model (last_hidden_state and the last real
    token's state)."""
    import torch
    import transformers

    config = transformers.Qwen3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      max_position_embeddings=64)
    torch.manual_seed(0)
    getattr(transformers, saved_as)(config).save_pretrained(tmp_path / "ckpt")
    task = "auto" if saved_as == "Qwen3Model" else "feature-extraction"
    out = export_encoder(tmp_path / "ckpt", tmp_path / "art", task=task)
    config = NeuronConfig.load(out)
    assert (config.task, config.pooling.mode, config.pooling.normalize) == ("feature-extraction", "last_token", True)
    assert [t.name for t in config.graphs["encoder_b4_s32"].inputs] == ["input_ids", "attention_mask"]
    with pytest.raises(ShapeError, match="exceeds the model's max_position_embeddings"):
        export_encoder(tmp_path / "ckpt", tmp_path / "too-long", task=task, sequence_length=128, context_buckets=[128])


def test_a_folder_saved_by_sentence_transformers_6_exports_and_embeds_like_it(tiny_dirs, tmp_path):
    """sentence-transformers 6 writes `"pooling_mode": "cls"` (not pooling_mode_* flags) and new module type names."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from neuron_infer import NeuronModelForFeatureExtraction

    st = SentenceTransformer(str(tiny_dirs["st"]), device="cpu")
    st.save(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "cls"
    out = export_encoder(tmp_path / "saved", tmp_path / "art")
    config = NeuronConfig.load(out)
    assert (config.pooling.mode, config.pooling.normalize) == ("cls", True)
    sentences = ["a short one", "a somewhat longer sentence about lighthouses and the sea", "x"]
    got = NeuronModelForFeatureExtraction.from_pretrained(out).encode(sentences)
    np.testing.assert_allclose(got, st.encode(sentences), atol=1e-5)


def test_pooling_without_the_prompt_is_refused(tiny_dirs, tmp_path):
    folder = _st_variant(tiny_dirs["st"], tmp_path / "st", pooling={"pooling_mode": "mean", "include_prompt": False})
    with pytest.raises(UnsupportedArchitectureError, match="include_prompt: false"):
        export_encoder(folder, tmp_path / "art")


def test_encode_applies_the_models_named_prompts_like_sentence_transformers(tiny_dirs, tmp_path):
    """config_sentence_transformers.json `prompts` (Qwen3-Embedding's "query") travel with the artifact."""
    import shutil

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from neuron_infer import NeuronModelForFeatureExtraction

    folder = shutil.copytree(tiny_dirs["st"], tmp_path / "st")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "doc": "passage: "}, "default_prompt_name": "doc"}))
    ours = NeuronModelForFeatureExtraction.from_pretrained(export_encoder(folder, tmp_path / "art"))
    st = SentenceTransformer(str(folder), device="cpu")
    sentences = ["where is the lighthouse", "the lighthouse stands on the northern cape"]
    np.testing.assert_allclose(ours.encode(sentences, prompt_name="query"), st.encode(sentences, prompt_name="query"),
                               atol=1e-5)
    np.testing.assert_allclose(ours.encode(sentences), st.encode(sentences), atol=1e-5)  # the default: "doc"
    assert not np.allclose(ours.encode(sentences), ours.encode(sentences, prompt="")), "the default prompt applies"
    with pytest.raises(ValueError, match=r"prompt_name='passage': the model's prompts are \['doc', 'query'\]"):
        ours.encode(sentences, prompt_name="passage")
