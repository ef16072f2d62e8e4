"""LoRA shards -> PEFT adapter files (adapter_model.safetensors + adapter_config.json), and merging."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PretrainedConfig

from neuron_train.lora.adapter import HostInfo, LoraConfig
from neuron_train.models.convert import shard_context
from neuron_train.models.plan import ParamPlan, full_sizes, unshard

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def peft_key(hf_module: str, factor: str) -> str:
    """PEFT's key for a factor of the adapter on a Hugging Face module (model.layers.0.self_attn.q_proj)."""
    return f"base_model.model.{hf_module}.lora_{factor}.weight"


def merge_lora_shards(
    shards: list[dict[str, torch.Tensor]], plan: dict[str, ParamPlan], config: PretrainedConfig
) -> dict[str, torch.Tensor]:
    """Full PEFT-keyed adapter tensors from every TP rank's `...lora.lora_{A,B}.<segment>` tensors."""
    ctx = shard_context(config, len(shards))
    out: dict[str, torch.Tensor] = {}
    for name in shards[0]:
        host, rest = name.split(".lora.", 1)
        factor, segment = rest.removeprefix("lora_").split(".", 1)
        info = HostInfo.from_plan(plan, host)
        fp = info.factor_plan(factor, segment)
        idx = info.segments.index(segment)
        locals_ = [s[name] for s in shards]
        # B of a fused column host: its segment's full size; otherwise an even split of the factor.
        sizes = [info.sizes[idx]] if info.column and info.sizes and fp.dim is not None else full_sizes(fp, locals_[0], ctx)
        out[peft_key(info.hf_modules[idx], factor)] = unshard(locals_, fp, ctx, sizes)[0].contiguous()
    return out


def save_peft_adapter(out_dir: str | Path, tensors: dict[str, torch.Tensor], cfg: LoraConfig, base_model: str = "") -> None:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    targets = sorted({k.split(".lora_")[0].rsplit(".", 1)[1] for k in tensors})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))


@torch.no_grad()
def merge_into(state_dict: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], cfg: LoraConfig) -> None:
    """W += (alpha / r) * B @ A for every adapted module, in place on a full HF state dict."""
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        w = state_dict[target]
        state_dict[target] = (w.double() + cfg.scaling * (b.double() @ a.double())).to(w.dtype)
