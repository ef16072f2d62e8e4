"""Granite = Llama with four scalars: embedding, residual and attention multipliers, logits scaling.

`attention_multiplier` replaces head_dim**-0.5 as the softmax scale; logits are divided by
`logits_scaling` before the loss. No new parameters, so the plan is Llama's.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from neuron_train.models.llama import LlamaAttention, LlamaForTraining


class GraniteAttention(LlamaAttention):
    def attention_scaling(self, config: PretrainedConfig) -> float:
        return float(config.attention_multiplier)


class GraniteForTraining(LlamaForTraining):
    attention_cls = GraniteAttention

    def residual_multiplier(self, config: PretrainedConfig) -> float:
        return float(config.residual_multiplier)

    def scale_embeddings(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.config.embedding_multiplier

    def scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.config.logits_scaling
