"""A valid, realistic `neuron_config.json` for the neuron-cache tests.

The model is Llama-3.2-1B-shaped (hidden 2048, 32 query heads, 8 KV heads of 64, 16 layers) exported
for continuous batching on 2 tensor-parallel ranks: one context-encoding graph per prompt bucket and
one token-generation graph sharing a KV-cache state, fused qkv and gate_up weights sharded per segment,
lm_head tied to the embedding.

Every field is written out, defaults included, so that `to_dict()` of the parsed config must give
back exactly this dict.
"""

from __future__ import annotations

import hashlib
from typing import Any

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, LAYERS, VOCAB = 2048, 32, 8, 64, 8192, 16, 128256
BATCH, MAX_BATCH, SEQUENCE_LENGTH, BUCKETS = 1, 4, 1024, [128, 512]
KV_SHAPE = [LAYERS, MAX_BATCH, KV_HEADS, SEQUENCE_LENGTH, HEAD_DIM]  # (layers, slots, kv_heads, seq, head_dim)

QKV = "model.layers.0.self_attn.qkv_proj.weight"
GRAPH_FILES = {
    "context_encoding_128": "graphs/context_encoding_128.pt2",
    "context_encoding_512": "graphs/context_encoding_512.pt2",
    "token_generation": "graphs/token_generation.pt2",
}
WEIGHT_FILES = ["weights/model-00001-of-00002.safetensors", "weights/model-00002-of-00002.safetensors"]


def fake_sha256(name: str) -> str:
    """A well-formed digest for a file the test does not write."""
    return hashlib.sha256(name.encode()).hexdigest()


def _tensor(name: str, shape: list[int], dtype: str) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": dtype}


def _graph(role: str, rows: int, tokens: int, bucket: int | None, file: str) -> dict[str, Any]:
    """A decoder graph over `rows` sequences of `tokens` new tokens each."""
    return {
        "file": file,
        "sha256": fake_sha256(file),
        "role": role,
        "bucket": bucket,
        "rows": None,
        "inputs": [
            _tensor("input_ids", [rows, tokens], "int64"),
            _tensor("position_ids", [rows, tokens], "int64"),
            _tensor("seq_ids", [rows], "int32"),
        ],
        "outputs": [_tensor("logits", [rows, 1, VOCAB], "bfloat16")],
        "mutated_state": [t["name"] for t in _state()],
    }


def _state() -> list[dict[str, Any]]:
    return [_tensor("kv_cache.k", KV_SHAPE, "bfloat16"), _tensor("kv_cache.v", KV_SHAPE, "bfloat16")]


def _sharding() -> dict[str, dict[str, Any]]:
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    plan: dict[str, dict[str, Any]] = {
        "model.embed_tokens.weight": {"partition_dim": 0, "segments": None, "granule": None},
        "model.norm.weight": {"partition_dim": None, "segments": None, "granule": None},
    }
    for i in range(LAYERS):
        layer = f"model.layers.{i}"
        plan[f"{layer}.self_attn.qkv_proj.weight"] = {"partition_dim": 0, "segments": [q, kv, kv], "granule": HEAD_DIM}
        plan[f"{layer}.self_attn.o_proj.weight"] = {"partition_dim": 1, "segments": None, "granule": None}
        plan[f"{layer}.mlp.gate_up_proj.weight"] = {"partition_dim": 0, "segments": [INTERMEDIATE, INTERMEDIATE], "granule": None}
        plan[f"{layer}.mlp.down_proj.weight"] = {"partition_dim": 1, "segments": None, "granule": None}
        plan[f"{layer}.input_layernorm.weight"] = {"partition_dim": None, "segments": None, "granule": None}
        plan[f"{layer}.post_attention_layernorm.weight"] = {"partition_dim": None, "segments": None, "granule": None}
    return plan


def valid_config_dict() -> dict[str, Any]:
    """A fresh dict (callers mutate it) that `NeuronConfig.from_dict` must accept."""
    graphs = {
        f"context_encoding_{b}": _graph("context_encoding", BATCH, b, b, GRAPH_FILES[f"context_encoding_{b}"])
        for b in BUCKETS
    }
    graphs["token_generation"] = _graph("token_generation", MAX_BATCH, 1, None, GRAPH_FILES["token_generation"])
    return {
        "schema_version": 1,
        "producer": {"package": "neuron-export", "version": "0.1.0"},
        "task": "text-generation",
        "model_type": "llama",
        "architecture": "LlamaForCausalLM",
        "checkpoint_id": "meta-llama/Llama-3.2-1B",
        "checkpoint_revision": "4e20de362430cd3b72f300e6b0f18e50e7166e08",
        "batch_size": BATCH,
        "max_batch_size": MAX_BATCH,
        "continuous_batching": True,
        "sequence_length": SEQUENCE_LENGTH,
        "max_context_length": BUCKETS[-1],
        "context_buckets": list(BUCKETS),
        "tensor_parallel_size": 2,
        "torch_dtype": "bfloat16",
        "on_device_sampling": False,
        "max_topk": 256,
        "speculation_length": 0,
        "quantization": None,
        "target": {
            "backend": "torch-aot",
            "device": "cpu",
            "compiler_version": "2.13.0",
            "torch_version": "2.13.0+cpu",
            "instance_type": None,
        },
        "graphs": graphs,
        "weights": {
            "files": [{"path": p, "sha256": fake_sha256(p)} for p in WEIGHT_FILES],
            "sharding": _sharding(),
            "aliases": {"lm_head.weight": "model.embed_tokens.weight"},  # tied embeddings
            "derived": {"model.layers.0.mlp.down_proj.packed_weight": {
                "op": "onednn_packed_linear", "source": "model.layers.0.mlp.down_proj.weight", "args": {"batch_size": 1}}},
        },
        "state": _state(),
        "metadata": {"exported_by": "tests/cache/config_factory.py"},
    }
