"""Embeddings from a decoder-only checkpoint (the Qwen3-Embedding recipe): the decoder's own layers
(`models/decoder.py`, the llama/qwen3/... families and their CHECKPOINT data) run once over the whole input,
causally plus key padding, with no KV cache; the final norm's output is pooled (last token by default).

Same calling convention as `EncoderModel`: input_ids, attention_mask (rows, seq) int64, padded on the right;
outputs last_hidden_state (rows, seq, hidden) and sentence_embedding (rows, hidden), float32.
"""

from __future__ import annotations

import torch
from torch import nn

from neuron_cache.arch.spec import DecoderArch, field_default
from neuron_export.models.decoder import DecoderLayer, RMSNorm
from neuron_export.models.encoders.model import pool
from neuron_export.models.spec import StaticShapes

# DecoderArch fields this model does not interpret (the generation decoder does): each must keep its default.
UNSUPPORTED = ("rms_norm_unit_offset", "embedding_normalizer", "sandwich_norms", "rope_layer_types", "attn_logit_softcap")


def check_embeddable(arch: DecoderArch) -> None:
    used = [f"{name}={getattr(arch, name)!r}" for name in UNSUPPORTED if getattr(arch, name) != field_default(arch, name)]
    if used:
        raise ValueError(f"model_type '{arch.model_type}' has {', '.join(used)}, which decoder embeddings do not "
                         "support; export it for text generation (--task text-generation) instead")


class DecoderEmbedModel(nn.Module):
    tp = 1
    task = "feature-extraction"

    def __init__(self, arch: DecoderArch, sequence_length: int, pooling: str | None = "last_token",
                 dtype: str = "float32"):
        super().__init__()
        check_embeddable(arch)
        self.arch, self.pooling = arch, pooling
        # The layers read the shapes for tensor parallelism and the cache only; there is no cache here.
        shapes = StaticShapes(batch_size=1, sequence_length=sequence_length, context_buckets=[sequence_length],
                              dtype=dtype)
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(arch, shapes, i, kv_cache=False) for i in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        rot = arch.rotary_dim or arch.head_dim
        self.register_buffer("rope_cos", torch.zeros(sequence_length, rot, dtype=getattr(torch, dtype)))
        self.register_buffer("rope_sin", torch.zeros(sequence_length, rot, dtype=getattr(torch, dtype)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        T = input_ids.shape[1]
        cos, sin = self.rope_cos[:T][None, None], self.rope_sin[:T][None, None]
        biases = self._biases(attention_mask, self.rope_cos.dtype)
        hidden = self.embed_tokens(input_ids) * self.arch.embedding_multiplier
        for layer in self.layers:
            bias = biases[self.arch.sliding_window(layer.attn.layer)]
            hidden = layer(hidden, lambda attn, h, bias=bias: attn.encode(h, cos, sin, bias))
        hidden = self.norm(hidden)
        if self.pooling is None:
            return (hidden.float(),)
        return hidden.float(), pool(hidden, attention_mask, self.pooling).float()

    def _biases(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> dict[int | None, torch.Tensor]:
        """Additive masks (rows, 1, T, T) by sliding window: causal and key padding, finite (finfo.min), so an
        all-padding row stays finite."""
        T = attention_mask.shape[1]
        pos = torch.arange(T, device=attention_mask.device)
        q, k = pos.view(-1, 1), pos.view(1, -1)
        keys = attention_mask.bool()[:, None, None, :]
        out = {}
        for window in {self.arch.sliding_window(i) for i in range(self.arch.num_layers)}:
            allowed = k <= q if window is None else (k <= q) & (k > q - window)
            out[window] = (~(allowed[None, None] & keys)).to(dtype) * torch.finfo(dtype).min
        return out

    # ---- the calling convention (see EncoderModel) -------------------------------------------
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"]

    def output_names(self) -> list[str]:
        return ["last_hidden_state"] + (["sentence_embedding"] if self.pooling is not None else [])

    def example_inputs(self, rows: int, seq: int) -> tuple[torch.Tensor, ...]:
        return torch.zeros(rows, seq, dtype=torch.long), torch.ones(rows, seq, dtype=torch.long)

    def output_specs(self, rows: int, seq: int) -> list[dict]:
        shapes = {"last_hidden_state": [rows, seq, self.arch.hidden_size], "sentence_embedding": [rows, self.arch.hidden_size]}
        return [{"name": n, "shape": shapes[n], "dtype": "float32"} for n in self.output_names()]

    def state_names(self) -> list[str]:
        return []

    def reset_state(self) -> None:
        """No state."""

    def rank_buffers(self, rank: int) -> dict[str, torch.Tensor]:
        return {}
