"""LoRA adapters for the parallel linears, in PEFT's file format."""

from neuron_train.lora.adapter import LoraConfig, inject_lora

__all__ = ["LoraConfig", "inject_lora"]
