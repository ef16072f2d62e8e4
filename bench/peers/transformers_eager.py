"""transformers' eager `generate` on the GGUF, dequantized by transformers: the baseline every user has."""

from __future__ import annotations

from common import smollm2_gguf


def load(dtype_name: str):
    """(generate(ids, n), weight bytes): greedy, exactly n new tokens (EOS ignored, like every other peer); the
    bytes are every parameter once (parameters() counts the tied embedding/lm_head once)."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf()
    # GGUF-loaded models refuse .float() but accept .to(dtype).
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).to(getattr(torch, dtype_name))
    model.eval()

    def generate(ids, n: int):
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)

    return generate, sum(p.numel() * p.element_size() for p in model.parameters())
