"""Tiny random mixture-of-experts checkpoints (mixtral, qwen3_moe) and transformers' eager reference on their weights.

The reference runs transformers' definitional expert loop (`experts_implementation="eager"`: a loop over the experts
some token chose) rather than its default grouped_mm, so the comparison is with the plain algorithm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from support.tiny import save_tiny_checkpoint, tiny_hf_model

SIZES = dict(vocab_size=160, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
             pad_token_id=0)
CONFIGS = {
    # every layer routed, one expert a token
    "mixtral-4x1": lambda: transformers.MixtralConfig(**SIZES, intermediate_size=48, num_local_experts=4,
                                                      num_experts_per_tok=1),
    "mixtral-8x2": lambda: transformers.MixtralConfig(**SIZES, intermediate_size=40, num_local_experts=8,
                                                      num_experts_per_tok=2),
    # layer 0 dense (mlp_only_layers), top-3 weights used as the softmax gives them (norm_topk_prob False)
    "qwen3_moe-6x3": lambda: transformers.Qwen3MoeConfig(**SIZES, intermediate_size=96, moe_intermediate_size=48,
                                                         num_experts=6, num_experts_per_tok=3, norm_topk_prob=False,
                                                         mlp_only_layers=[0]),
    # decoder_sparse_step 2: layer 0 dense, layer 1 routed; top-2 renormalised
    "qwen3_moe-8x2": lambda: transformers.Qwen3MoeConfig(**SIZES, intermediate_size=80, moe_intermediate_size=32,
                                                         num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                                                         decoder_sparse_step=2),
}

# three prompts of lengths 5, 13 and 27: one in each of the buckets 8, 16 and 32
PROMPTS = [[5, 9, 33, 7, 100], [11, 3, 150, 42, 8, 19, 77, 61, 2, 90, 14, 27, 6],
           [int(x) for x in torch.randint(3, 160, (27,), generator=torch.Generator().manual_seed(1))]]


def moe_reference(config: Any, seed: int = 0) -> torch.nn.Module:
    """transformers' plain per-expert loop (its default, grouped_mm, is another kernel) as the reference."""
    return tiny_hf_model(config, seed, experts_implementation="eager")


def save_moe_checkpoint(config: Any, directory: Path, seed: int = 0) -> torch.nn.Module:
    """Saved in the Hub's per-expert layout (transformers 5 writes experts.{j}.gate_proj / w1 ... tensors)."""
    return save_tiny_checkpoint(config, directory, seed, experts_implementation="eager")


def generate(model: Any, prompts: list[list[int]], n: int) -> list[list[int]]:
    """`NeuronModelForCausalLM.generate` over left-padded prompts (as transformers wants them): n greedy tokens each."""
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=None)
    return [out[i, width:].tolist() for i in range(len(prompts))]
