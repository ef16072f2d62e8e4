"""Which architectures train, decided from the shared description: unimplemented DecoderArch features are
refused up front naming the field; families nobody wrote training code for (qwen2, mixtral) train through
the same modules and match transformers (single process, tp=1)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from neuron_cache.arch import DecoderArch, family_for
from neuron_train.models import UnsupportedArchitectureError, build_model, model_class
from neuron_train.models.derive import check_supported
from neuron_train.parallel.dims import ParallelDims


def test_sliding_window_is_refused_naming_the_field() -> None:
    from transformers import Qwen3Config

    cfg = Qwen3Config(**{**tiny_config("qwen3").to_dict(), "use_sliding_window": True, "sliding_window": 8,
                         "max_window_layers": 0, "layer_types": None})
    with pytest.raises(UnsupportedArchitectureError, match=r"sliding_windows=\[8, 8\].*use_sliding_window=false"):
        model_class(cfg)


def test_nope_layers_are_refused() -> None:
    from transformers import SmolLM3Config

    cfg = SmolLM3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=256, no_rope_layers=[1, 1, 1, 0])
    with pytest.raises(UnsupportedArchitectureError, match=r"rope_layers=\[True, True, True, False\]"):
        model_class(cfg)


def test_a_field_training_does_not_know_is_refused_when_set() -> None:
    @dataclasses.dataclass(kw_only=True, slots=True)
    class Future(DecoderArch):  # the description gains a feature training has not implemented
        attention_sink_tokens: int = 0

    base = {f.name: getattr(family_for("llama").arch(tiny_config("llama")), f.name) for f in dataclasses.fields(DecoderArch)}
    check_supported(Future(**base))  # left at its default: nothing changes, accepted
    with pytest.raises(UnsupportedArchitectureError, match=r"attention_sink_tokens=4 \(default 0\)"):
        check_supported(Future(**base, attention_sink_tokens=4))


def test_moe_refuses_sequence_parallel_and_expert_lora() -> None:
    from neuron_train.lora import LoraConfig, inject_lora

    cfg = tiny_config("qwen3_moe")
    with pytest.raises(ValueError, match=r"sequence_parallel=True with qwen3_moe \(num_experts=6\)"):
        model_class(cfg)(cfg, ParallelDims(tp=2), sequence_parallel=True)
    model = model_class(cfg)(cfg, ParallelDims.local())
    with pytest.raises(ValueError, match=r"includes \['gate_proj'\], but layers \[0, 2\]"):
        inject_lora(model, LoraConfig(target_modules=("q_proj", "gate_proj")))
    assert inject_lora(model, LoraConfig(target_modules=("q_proj", "o_proj")))  # attention LoRA still works


def _config(model_type: str):
    from transformers import MixtralConfig, Qwen2Config

    common = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256)
    if model_type == "qwen2":
        return Qwen2Config(**common)
    return MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
                         router_aux_loss_coef=0.2, sliding_window=None)


@pytest.mark.parametrize("model_type", ["qwen2", "mixtral"])
def test_undescribed_families_train_like_transformers(model_type: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(_config(model_type)).float()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    want = hf(input_ids=ids, labels=ids)
    ours = build_model(tmp_path, ParallelDims.local())(ids, ids)
    loss = ours.loss_sum / ours.num_tokens + (0 if ours.router_aux_loss is None else ours.router_aux_loss)
    torch.testing.assert_close(ours.logits, want.logits, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(loss, want.loss, atol=2e-6, rtol=1e-5)
