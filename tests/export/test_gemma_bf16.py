"""Gemma's orders of operations that float32 cannot see (the exported cases in test_architectures.py run in
float32): its RMSNorm scales by (1 + weight) in float32 before the cast, and its embeddings are multiplied by
sqrt(hidden_size) rounded to float32 and then to the weights' dtype. Both bit for bit against transformers in bfloat16."""

from __future__ import annotations

import torch
import transformers
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm, Gemma3TextScaledWordEmbedding

from neuron_export.models.build import build_decoder
from neuron_export.models.decoder import RMSNorm
from neuron_export.models.spec import StaticShapes


def test_rms_norm_unit_offset_matches_transformers_bitwise():
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 7, 72, generator=gen) * 3).bfloat16()
    weight = (torch.randn(72, generator=gen) * 0.5).bfloat16()
    ref = Gemma3RMSNorm(72, eps=1e-6).bfloat16()
    ours = RMSNorm(72, 1e-6, unit_offset=True).bfloat16()
    llama_order = RMSNorm(72, 1e-6).bfloat16()  # cast, then scale in bfloat16
    with torch.no_grad():
        ref.weight.copy_(weight)
        ours.weight.copy_(weight)
        llama_order.weight.copy_(1.0 + weight)
        assert torch.equal(ours(x), ref(x))
        assert not torch.equal(llama_order(x), ref(x))  # the order is visible in bfloat16


def test_embedding_normalizer_rounds_like_transformers():
    # sqrt(72) = 8.485..., 8.5 in bfloat16: multiplying by the unrounded value gives other bfloat16 embeddings
    config = transformers.Gemma3TextConfig(vocab_size=151, hidden_size=72, intermediate_size=96, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                           max_position_embeddings=64, pad_token_id=None)
    _, model = build_decoder(config, StaticShapes(batch_size=1, sequence_length=16, context_buckets=[16],
                                                  dtype="bfloat16"))
    ref = Gemma3TextScaledWordEmbedding(151, 72, None, embed_scale=72**0.5).bfloat16()
    with torch.no_grad():
        ref.weight.copy_(torch.randn(151, 72, generator=torch.Generator().manual_seed(1)))
        model.embed_tokens.weight.copy_(ref.weight)
        ids = torch.arange(151)[None]
        assert model.embedding_normalizer == 8.5
        assert torch.equal(model.embed_tokens(ids) * model.embedding_normalizer, ref(ids))
        assert not torch.equal(model.embed_tokens(ids) * 72**0.5, ref(ids))
