"""Tiny random BERT checkpoints (with a WordPiece tokenizer) for every encoder task, a tiny sentence-transformers
folder, and their encoder artifacts.

`encoder_artifact` builds artifacts with neuron-export when it exports encoders; until then (neuron-export
0.x text-generation only) with `build_encoder_artifact`, a minimal builder here that traces transformers' own
model with torch.export into the encoder-graph contract (one graph per (rows, bucket), the graph signature, the
weights, the trust record). Either way the runtime under test reads only the artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers

from support.tiny import randomize_

WORDS = ("the a an is was be to of and in on at it this that cat dog sat mat ran fast slow paris france city "
         "capital big small red blue green happy sad good bad movie film great awful love hate i you he she we "
         "they what where who when why how name my your john mary london berlin lives works").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64, type_vocab_size=2, pad_token_id=0)
HEADS = {
    "feature-extraction": transformers.BertModel,
    "fill-mask": transformers.BertForMaskedLM,
    "text-classification": transformers.BertForSequenceClassification,
    "token-classification": transformers.BertForTokenClassification,
    "question-answering": transformers.BertForQuestionAnswering,
}
LABELS = {"text-classification": ["NEGATIVE", "POSITIVE", "NEUTRAL"],
          "token-classification": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]}


def tiny_tokenizer(directory: Path) -> Any:
    directory.mkdir(parents=True, exist_ok=True)
    vocab = [*SPECIALS, *WORDS, *"abcdefghijklmnopqrstuvwxyz.,?!'", *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    # transformers 5: the vocabulary is a dict (`vocab_file=` is ignored: a 5-token tokenizer)
    tokenizer = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True,
                                           model_max_length=512)
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_bert(task: str, directory: Path, seed: int = 0) -> Path:
    """A random 2-layer BERT with `task`'s head, its tokenizer beside it."""
    tokenizer = tiny_tokenizer(directory)
    labels = LABELS.get(task)
    extra = dict(id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)}) if labels else {}
    config = transformers.BertConfig(vocab_size=len(tokenizer), **TINY_BERT, **extra)
    model = HEADS[task](config)
    randomize_(model, seed, std=0.3)
    model.eval().save_pretrained(directory)
    return directory


def tiny_sentence_transformer(directory: Path, seed: int = 0) -> Path:
    """A sentence-transformers folder: the tiny BERT, mean pooling, Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    bert = tiny_bert("feature-extraction", directory.parent / f"{directory.name}-bert", seed)
    body = Transformer(str(bert), max_seq_length=24)
    model = SentenceTransformer(modules=[body, Pooling(TINY_BERT["hidden_size"], "mean"), Normalize()], device="cpu")
    model.save(str(directory))
    return directory


def reference(directory: Path, task: str) -> torch.nn.Module:
    """transformers' eager float32 model of the checkpoint: what the artifact's outputs are compared with."""
    return HEADS[task].from_pretrained(directory, attn_implementation="eager").eval()


# ---- the fallback builder (until neuron-export exports encoders) ------------------------------------------
OUTPUTS = {"feature-extraction": ["last_hidden_state"], "fill-mask": ["logits"], "text-classification": ["logits"],
           "token-classification": ["logits"], "question-answering": ["start_logits", "end_logits"]}


class _EncoderGraph(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, task: str, pooling: str | None, input_names: list[str]):
        super().__init__()
        self.model, self.task, self.pooling, self.input_names = model, task, pooling, input_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = dict(zip(self.input_names, inputs))
        out = self.model(**kwargs)
        values = tuple(out[name].float() for name in OUTPUTS[self.task])
        if self.pooling == "mean":
            mask = kwargs["attention_mask"].unsqueeze(-1).float()
            values += ((out["last_hidden_state"] * mask).sum(1) / mask.sum(1).clamp(min=1e-9),)
        elif self.pooling == "cls":
            values += (out["last_hidden_state"][:, 0],)
        return values


def build_encoder_artifact(checkpoint: Path, out: Path, *, task: str, batch_buckets: list[int],
                           context_buckets: list[int], pooling: dict | None = None) -> Path:
    from safetensors.torch import save_file

    from neuron_cache import Artifact, NeuronConfig, TensorSpec
    from neuron_cache.artifact import sha256_file
    from neuron_cache.signature import SIGNATURE_KEY, GraphSignature
    from neuron_cache.trust import record_trusted

    model = HEADS[task].from_pretrained(checkpoint, attn_implementation="eager").eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    graph_module = _EncoderGraph(model, task, (pooling or {}).get("mode"), names)
    (out / "graphs").mkdir(parents=True)
    (out / "weights").mkdir()
    static = dict(batch_size=batch_buckets[-1], sequence_length=context_buckets[-1], torch_dtype="float32")
    graphs, constants = {}, {}
    for rows in batch_buckets:
        for bucket in context_buckets:
            name = f"encoder_r{rows}_b{bucket}"
            example = tuple(torch.ones(rows, bucket, dtype=torch.long) for _ in names)
            with torch.no_grad():
                ep = torch.export.export(graph_module, example, strict=False)
            out_node = next(n for n in ep.graph.nodes if n.op == "output")
            output_names = OUTPUTS[task] + ["sentence_embedding"] * bool(pooling)
            outputs = [TensorSpec(name=n, shape=list(v.meta["val"].shape), dtype="float32")
                       for n, v in zip(output_names, out_node.args[0])]
            inputs = [TensorSpec(name=n, shape=[rows, bucket], dtype="int64") for n in names]
            consts = {}
            for cname in [*ep.graph_signature.parameters, *ep.graph_signature.buffers]:
                tensor = ep.state_dict.get(cname, ep.constants.get(cname))
                constants[cname] = tensor.detach().clone().contiguous()
                consts[cname] = TensorSpec(name=cname, shape=list(tensor.shape),
                                           dtype=str(tensor.dtype).removeprefix("torch."))
            signature = GraphSignature(graph=name, static={**static, "bucket": bucket, "rows": rows}, inputs=inputs,
                                       outputs=outputs, constants=consts)
            file = out / "graphs" / f"{name}.pt2"
            torch.export.save(ep, str(file), extra_files={SIGNATURE_KEY: signature.to_json()})
            digest = sha256_file(file)
            record_trusted(digest, "tests/support/tiny_encoders.py")
            graphs[name] = dict(file=f"graphs/{name}.pt2", sha256=digest, role="encoder", bucket=bucket, rows=rows,
                                inputs=[_spec(t) for t in inputs], outputs=[_spec(t) for t in outputs])
    save_file(constants, str(out / "weights" / "model.safetensors"))
    for f in checkpoint.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            (out / f.name).write_bytes(f.read_bytes())
    config = NeuronConfig.from_dict(dict(
        schema_version=1, producer=dict(package="tests", version="0"), task=task, model_type="bert",
        architecture=model.config.architectures[0], batch_size=batch_buckets[-1], max_batch_size=batch_buckets[-1],
        sequence_length=context_buckets[-1], max_context_length=context_buckets[-1], context_buckets=context_buckets,
        batch_buckets=batch_buckets, pooling=pooling, torch_dtype="float32",
        target=dict(backend="torch-export", device="cpu", compiler_version=f"torch.export-{torch.__version__}",
                    torch_version=torch.__version__),
        graphs=graphs, weights=dict(files=[dict(path="weights/model.safetensors",
                                                sha256=sha256_file(out / "weights" / "model.safetensors"))]),
    ))
    config.save(out)
    Artifact.open(out)
    return out


def _spec(t: Any) -> dict:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}


def encoder_artifact(checkpoint: Path, out: Path, task: str, **shapes: Any) -> Path:
    """The artifact of `checkpoint` for `task`: batch 4 (buckets 1, 4), sequence 32 (buckets 16, 32)."""
    shapes = {"batch_buckets": [1, 4], "context_buckets": [16, 32], **shapes}
    from neuron_export.export import ExportOptions, export

    if "batch_buckets" in ExportOptions.__dataclass_fields__:  # (absent while neuron-export exports decoders only)
        export(ExportOptions(model=str(checkpoint), output=str(out), task="auto", batch_size=shapes["batch_buckets"][-1],
                             sequence_length=shapes["context_buckets"][-1], backend="torch-export", compile_workers=0,
                             **shapes), log=lambda _m: None)
        return out
    pooling = None
    modules = checkpoint / "modules.json"
    if modules.is_file():  # a sentence-transformers folder: its Transformer module is at the root
        pool = json.loads((checkpoint / "1_Pooling" / "config.json").read_text())
        mode = pool.get("pooling_mode") or next(k.removeprefix("pooling_mode_").removesuffix("_token")
                                                for k, v in pool.items() if k.startswith("pooling_mode_") and v)
        normalize = any(m["type"].endswith("Normalize") for m in json.loads(modules.read_text()))
        pooling = {"mode": mode, "normalize": normalize}
        shapes.pop("pooling", None)
    return build_encoder_artifact(checkpoint, out, task=task, pooling=shapes.pop("pooling", pooling), **shapes)
