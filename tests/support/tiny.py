"""Tiny random checkpoints, their torch-export artifacts and transformers' greedy reference.

Two weight inits, kept apart because numerics-based tests were written against each:
- `make_tiny_checkpoint`: a Llama seeded with torch.manual_seed, every parameter ~ N(0, 0.15) (larger than the
  default init: less degenerate greedy text); with a tokenizer, its vocabulary and special tokens.
- `save_tiny_checkpoint` / `tiny_hf_model`: any architecture's eager float32 model, `randomize_`d from its own
  generator (norm weights near 1), for the comparisons with transformers in tests/export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

INIT_STD = 0.15
TINY_LLAMA = dict(vocab_size=160, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
# The shapes of a tiny torch-export artifact (no C++ compilation: it builds in seconds).
TINY_EXPORT = dict(batch_size=2, sequence_length=64, max_context_length=32, context_buckets=[8, 16, 32],
                   backend="torch-export")


def make_tiny_checkpoint(path: Path, seed: int = 0, tokenizer: Any = None, **overrides: Any) -> Path:
    """A 2-layer random Llama (TINY_LLAMA with `overrides`) saved to `path`; with a tokenizer, the checkpoint takes
    its vocabulary, bos and eos, and the tokenizer is saved beside it (so vLLM can serve it as text)."""
    if tokenizer is not None:
        overrides = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **overrides)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY_LLAMA, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, INIT_STD)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def randomize_(model: torch.nn.Module, seed: int, std: float = INIT_STD) -> None:
    """Every parameter ~ N(0, std), norm weights ~ N(1, std), biases included.

    Far from transformers' init (std 0.02, norms exactly 1, biases 0), so a dropped bias, a norm weight
    applied to the wrong tensor or a mis-scaled attention changes the logits visibly; norm weights stay
    near 1 so that attention is far from uniform and masking and rope bugs show.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
            p.copy_(1.0 + noise if "norm" in name.rsplit(".", 2)[-2] else noise)


def tiny_hf_model(config: Any, seed: int = 0, **options: Any) -> torch.nn.Module:
    """transformers' eager float32 model for `config`, with `randomize_`d weights (`options`: more from_config
    arguments, e.g. experts_implementation)."""
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32,
                                                          **options)
    randomize_(model, seed)
    return model.eval()


def save_tiny_checkpoint(config: Any, directory: Path, seed: int = 0, **options: Any) -> torch.nn.Module:
    model = tiny_hf_model(config, seed, **options)
    model.save_pretrained(directory)
    return model


def export_tiny(checkpoint: Path, out: Path, **options: Any) -> Path:
    """export() with the TINY_EXPORT shapes (`options` override them), silently."""
    from neuron_export.export import ExportOptions, export

    export(ExportOptions(model=str(checkpoint), output=str(out), **{**TINY_EXPORT, **options}), log=lambda _m: None)
    return out


def transformers_greedy(model: Any, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy continuation of `prompt`: exactly n tokens, eos ignored."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()
