"""Encoder artifacts of the tiny checkpoints of `support.encoders`, and transformers' reference models.

`encoder_artifact` exports with neuron-export when it can build encoder models; until then (its encoder model
definitions not yet merged) with `build_encoder_artifact`, a minimal builder that traces transformers' own model
with torch.export into the encoder-graph contract (one graph per (rows, bucket), the graph signature, the
weights, the trust record). Either way the runtime under test reads only the artifact.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
import transformers

# task -> transformers' Auto class: the eager model every artifact output is compared with
AUTO_CLASSES = {"feature-extraction": "AutoModel", "fill-mask": "AutoModelForMaskedLM",
                "text-classification": "AutoModelForSequenceClassification",
                "token-classification": "AutoModelForTokenClassification",
                "question-answering": "AutoModelForQuestionAnswering"}


def reference(directory: Path, task: str) -> torch.nn.Module:
    """transformers' eager float32 model of the checkpoint: what the artifact's outputs are compared with."""
    cls = getattr(transformers, AUTO_CLASSES[task])
    return cls.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()


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
        elif self.pooling == "last_token":  # (right padding: the last real token)
            last = kwargs["attention_mask"].sum(1) - 1
            values += (out["last_hidden_state"][torch.arange(last.shape[0]), last],)
        return values


def build_encoder_artifact(checkpoint: Path, out: Path, *, task: str, batch_buckets: list[int],
                           context_buckets: list[int], pooling: dict | None = None) -> Path:
    from safetensors.torch import save_file

    from neuron_cache import Artifact, NeuronConfig, TensorSpec
    from neuron_cache.artifact import sha256_file
    from neuron_cache.signature import SIGNATURE_KEY, GraphSignature
    from neuron_cache.trust import record_trusted

    model = reference(checkpoint, task)
    names = ["input_ids", "attention_mask"] + ["token_type_ids"] * (getattr(model.config, "type_vocab_size", 0) > 0)
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
        schema_version=1, producer=dict(package="tests", version="0"), task=task, model_type=model.config.model_type,
        architecture=(model.config.architectures or [type(model).__name__])[0], batch_size=batch_buckets[-1], max_batch_size=batch_buckets[-1],
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


DECODER_EMBEDDERS = ("qwen3", "qwen2", "llama")


def can_export_encoders() -> bool:
    return importlib.util.find_spec("neuron_export.models.encoders") is not None


def encoder_artifact(checkpoint: Path, out: Path, task: str, **shapes: Any) -> Path:
    """The artifact of `checkpoint` for `task`: batch 4 (buckets 1, 4), sequence 32 (buckets 16, 32)."""
    shapes = {"batch_buckets": [1, 4], "context_buckets": [16, 32], **shapes}
    if can_export_encoders():
        from support.encoders import export_encoder

        return export_encoder(checkpoint, out, task="auto", batch_size=shapes["batch_buckets"][-1],
                              sequence_length=shapes["context_buckets"][-1], **shapes)
    pooling = None
    modules = checkpoint / "modules.json"
    if modules.is_file():  # a sentence-transformers folder: its Transformer module is at the root
        pool = json.loads((checkpoint / "1_Pooling" / "config.json").read_text())
        mode = pool.get("pooling_mode") or next(k.removeprefix("pooling_mode_").removesuffix("_tokens")
                                                .removesuffix("_token") for k, v in pool.items()
                                                if k.startswith("pooling_mode_") and v)
        normalize = any(m["type"].endswith("Normalize") for m in json.loads(modules.read_text()))
        pooling = {"mode": mode, "normalize": normalize}
    elif json.loads((checkpoint / "config.json").read_text())["model_type"] in DECODER_EMBEDDERS:
        pooling = {"mode": "last_token", "normalize": True}  # Qwen3-Embedding's recipe
    return build_encoder_artifact(checkpoint, out, task=task, pooling=pooling, **shapes)
