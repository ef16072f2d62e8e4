"""Sharded training checkpoint -> one Hugging Face checkpoint directory.

The output is what `save_pretrained` would write: model.safetensors (HF parameter names, fused
tensors split back, kv replicas deduplicated, tied lm_head omitted), config.json, the tokenizer
files when the checkpoint has them. LoRA adapters go either into the weights (merge_lora=True) or,
unmerged, into OUTPUT_DIR/adapter/ as a PEFT adapter (kept out of OUTPUT_DIR itself because
transformers auto-loads an adapter_config.json found beside the weights).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from neuron_train.training.checkpoint import META, model_file, read_meta

_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json",
)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint-<step> directory, or a training output dir (its latest checkpoint)."""
    path = Path(path)
    if (path / META).exists():
        return path
    ckpts = sorted(path.glob("checkpoint-*/" + META), key=lambda p: int(p.parent.name.split("-")[1]))
    if not ckpts:
        raise FileNotFoundError(
            f"{path} holds no {META}: pass a checkpoint-<step> directory written by NeuronTrainer, or the "
            "training output_dir that contains them."
        )
    return ckpts[-1].parent


def consolidate(checkpoint_dir: str | Path, output_dir: str | Path, *, merge_lora: bool = False, dtype: str | None = None) -> Path:
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    from neuron_train.lora.adapter import LoraConfig
    from neuron_train.lora.export import merge_into, merge_lora_shards, save_peft_adapter
    from neuron_train.models import training_plan
    from neuron_train.models.convert import merge_shards

    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(_DTYPES)} or None (keep fp32).")
    ckpt = resolve_checkpoint(checkpoint_dir)
    out = Path(output_dir)
    meta = read_meta(ckpt)
    config = AutoConfig.from_pretrained(ckpt)
    plan = training_plan(config)
    shards = [load_file(str(ckpt / model_file(r))) for r in range(meta["tp"])]
    base = [{k: v for k, v in s.items() if ".lora." not in k} for s in shards]
    lora = [{k: v for k, v in s.items() if ".lora." in k} for s in shards]
    state = merge_shards(base, plan, config)

    out.mkdir(parents=True, exist_ok=True)
    if meta.get("lora") and lora[0]:
        cfg = LoraConfig(**meta["lora"])
        adapter = merge_lora_shards(lora, plan, config)
        if merge_lora:
            merge_into(state, adapter, cfg)
        else:
            save_peft_adapter(out / "adapter", adapter, cfg, base_model=str(out.resolve()))
    if dtype is not None:
        state = {k: v.to(_DTYPES[dtype]) for k, v in state.items()}
        config.dtype = dtype
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    for name in _TOKENIZER_FILES:
        if (ckpt / name).exists():
            shutil.copy2(ckpt / name, out / name)
    return out
