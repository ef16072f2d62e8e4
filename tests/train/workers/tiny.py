"""Tiny model configs and helpers shared by the torchrun workers and the tests."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

_COMMON = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    vocab_size=256, max_position_embeddings=256, rms_norm_eps=1e-6,
)


def tiny_config(model_type: str, vocab_size: int = 256):
    """llama: kv heads split over tp=2, biases, tied embeddings. qwen3: one kv head, so tp=2
    replicates it. granite: every multiplier away from 1. qwen3_moe: 6 experts, top-2 renormalised, the
    load-balancing loss on (coefficient 0.1, large enough that leaving it out fails the tests), layer 1 dense."""
    from transformers import GraniteConfig, LlamaConfig, Qwen3Config, Qwen3MoeConfig

    common = {**_COMMON, "vocab_size": vocab_size}
    if model_type == "llama":
        cfg = LlamaConfig(**common, num_key_value_heads=2, attention_bias=True, mlp_bias=True, tie_word_embeddings=True)
    elif model_type == "qwen3":
        cfg = Qwen3Config(**common, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False)
    elif model_type == "granite":
        cfg = GraniteConfig(
            **common, num_key_value_heads=2, embedding_multiplier=4.0, residual_multiplier=0.6,
            attention_multiplier=0.2, logits_scaling=3.0, tie_word_embeddings=False,
        )
    elif model_type == "qwen3_moe":
        cfg = Qwen3MoeConfig(
            **{**common, "num_hidden_layers": 3}, num_key_value_heads=2, head_dim=16, moe_intermediate_size=32,
            num_experts=6, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
            output_router_logits=True, router_aux_loss_coef=0.1, tie_word_embeddings=False,
        )
    else:
        raise ValueError(model_type)
    cfg._attn_implementation = "eager"
    return cfg


def tiny_hf_model(model_type: str, seed: int = 0, vocab_size: int = 256):
    """A transformers model with random weights (norm weights too, so they are exercised)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, vocab_size)).float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def out_dir() -> Path:
    return Path(sys.argv[sys.argv.index("--out") + 1])


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def write_json(name: str, data: dict) -> None:
    path = out_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def synthetic_dataset(n: int = 64, vocab_size: int = 256, seed: int = 0) -> list[dict[str, list[int]]]:
    """Random sequences of uneven length whose first 4 tokens are an unlabelled 'prompt'."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(8, 25, (1,), generator=g))
        ids = torch.randint(1, vocab_size, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 4 + ids[4:]})
    return out
