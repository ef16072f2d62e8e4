"""Every supported architecture, exported and run through its compiled graphs, against transformers (fp32).

Tiny random configs with odd sizes (GQA 6/2 and 4/1, head_dim != hidden/heads where the architecture
allows it) and each architecture's own features switched on. Each case is exported once per module
with the torch-export backend (batch 2, sequence 48, buckets 16 and 32) and checked on:
- prefill logits at prompt lengths bucket-1, bucket and bucket+1 (the last one runs the 32 bucket);
- 18 decode steps teacher-forced on transformers' greedy continuation;
- two prompts of different lengths in different slots, decoded together at different positions,
  up to the last KV-cache position;
and `test_feature_changes_transformers_output` shows each feature is visible at these lengths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from export_testlib import (
    BUCKETS,
    COMMON_CONFIG,
    SEQUENCE_LENGTH,
    assert_logits_close,
    export_tiny,
    greedy_reference,
    open_runtime,
    prompt_ids,
    reset_kv,
)
from support.tiny import save_tiny_checkpoint, tiny_hf_model

from neuron_infer.runtime import DecoderRuntime

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
DECODE_STEPS = 18
# Gemma 3's two rope tables: sliding layers a local base, global layers another base with linear scaling (real
# Gemma 3: 10k, and 1M with factor 8; smaller bases here so that both matter at 48 positions).
GEMMA3_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
               "full_attention": {"rope_type": "linear", "rope_theta": 1000.0, "factor": 8.0}}
# layer 0 slides over 6 positions, layer 1 attends globally; query_pre_attn_scalar 20 != head_dim 24
GEMMA = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
             query_pre_attn_scalar=20, sliding_window=6, layer_types=["sliding_attention", "full_attention"])


@dataclass
class Case:
    config_class: str
    fields: dict[str, Any]
    # config overrides that switch the case's own features off (see test_feature_changes_transformers_output)
    without: dict[str, dict[str, Any]] = field(default_factory=dict)
    # features no config field switches off: an in-place change of transformers' model that removes each
    unpatched: dict[str, Callable[[torch.nn.Module], None]] = field(default_factory=dict)

    def config(self, **overrides: Any) -> Any:
        return getattr(transformers, self.config_class)(**{**COMMON_CONFIG, **self.fields, **overrides})


CASES = {
    # GQA 6/2, head_dim 24 != 72/6, tied embeddings
    "llama": Case("LlamaConfig", dict(hidden_size=72, intermediate_size=136, num_attention_heads=6,
                                      num_key_value_heads=2, head_dim=24, tie_word_embeddings=True)),
    "llama3-rope": Case(
        "LlamaConfig",
        dict(hidden_size=72, intermediate_size=120, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
             rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False),
        without={"llama3 rope": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})},
    ),
    "mistral": Case(
        "MistralConfig",
        dict(hidden_size=72, intermediate_size=112, num_attention_heads=6, num_key_value_heads=2, head_dim=20,
             sliding_window=6, tie_word_embeddings=False),
        without={"sliding window": dict(sliding_window=None)},
    ),
    "qwen2": Case(
        "Qwen2Config",
        dict(hidden_size=64, intermediate_size=104, num_attention_heads=4, num_key_value_heads=1,
             use_sliding_window=False, tie_word_embeddings=False),
    ),
    "qwen3": Case("Qwen3Config", dict(hidden_size=72, intermediate_size=128, num_attention_heads=6,
                                      num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)),
    "granite": Case(
        "GraniteConfig",
        dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=1, head_dim=20,
             embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=4.0,
             tie_word_embeddings=False),
        without={
            "embedding_multiplier": dict(embedding_multiplier=1.0),
            "residual_multiplier": dict(residual_multiplier=1.0),
            "attention_multiplier": dict(attention_multiplier=20**-0.5),
            "logits_scaling": dict(logits_scaling=1.0),
        },
    ),
    "smollm3": Case(
        "SmolLM3Config",
        dict(hidden_size=72, intermediate_size=112, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
             no_rope_layers=[1, 0], tie_word_embeddings=True),
        without={"NoPE layer": dict(no_rope_layers=[1, 1])},
    ),
    "phi3": Case(
        "Phi3Config",
        dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=20,
             sliding_window=9, tie_word_embeddings=False,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
        without={
            "partial rotary": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
            "sliding window": dict(sliding_window=None),
        },
    ),
    # Gemma 3 as released: no soft-capping
    "gemma3": Case(
        "Gemma3TextConfig",
        dict(**GEMMA, rope_parameters=GEMMA3_ROPE, tie_word_embeddings=True),
        without={
            "sliding window": dict(sliding_window=64),
            "local rope table": dict(rope_parameters={**GEMMA3_ROPE, "sliding_attention": GEMMA3_ROPE["full_attention"]}),
            "linear rope scaling": dict(rope_parameters={**GEMMA3_ROPE, "full_attention": {"rope_type": "default",
                                                                                           "rope_theta": 1000.0}}),
            "query_pre_attn_scalar": dict(query_pre_attn_scalar=24),
        },
        unpatched={
            "embedding normalizer": lambda hf: hf.model.embed_tokens.embed_scale.fill_(1.0),
            "(1 + weight) norms": lambda hf: [m.weight.sub_(1.0) for n, m in hf.named_modules() if n.endswith("norm")],
            "sandwich norms": lambda hf: [setattr(layer, n, torch.nn.Identity()) for layer in hf.model.layers
                                          for n in ("post_attention_layernorm", "post_feedforward_layernorm")],
        },
    ),
    # attn_logit_softcapping too: transformers' Gemma 3 ignores it (test_gemma3_ignores_attn_logit_softcapping)
    "gemma3-softcap": Case(
        "Gemma3TextConfig",
        dict(**GEMMA, rope_parameters=GEMMA3_ROPE, final_logit_softcapping=4.0, attn_logit_softcapping=2.0,
             tie_word_embeddings=False),
        without={"final_logit_softcapping": dict(final_logit_softcapping=None)},
    ),
    # Gemma 2: one rope table, no q/k norms, soft-capped attention scores (every graph's explicit attention path)
    "gemma2": Case(
        "Gemma2Config",
        dict(**GEMMA, final_logit_softcapping=4.0, attn_logit_softcapping=2.0, tie_word_embeddings=True),
        without={"attn_logit_softcapping": dict(attn_logit_softcapping=None),
                 "final_logit_softcapping": dict(final_logit_softcapping=None)},
    ),
}


@dataclass
class Exported:
    name: str
    hf: torch.nn.Module
    artifact: DecoderRuntime
    vocab: int


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory) -> Exported:
    name = request.param
    config = CASES[name].config()
    tmp = tmp_path_factory.mktemp(name)
    hf = save_tiny_checkpoint(config, tmp / "checkpoint", seed=len(name))
    artifact = open_runtime(export_tiny(tmp / "checkpoint", tmp / "artifact"))
    assert artifact.config.model_type == config.model_type
    return Exported(name=name, hf=hf, artifact=artifact, vocab=config.vocab_size)


def _bucket_edge_lengths() -> list[int]:
    b = BUCKETS[0]
    return [b - 1, b, b + 1]


@pytest.mark.parametrize("length", _bucket_edge_lengths())
def test_prefill_at_bucket_edges(exported: Exported, length: int):
    art = exported.artifact
    reset_kv(art)
    prompt = prompt_ids(length, exported.vocab, seed=length)
    _, ref = greedy_reference(exported.hf, prompt, steps=0)
    assert_logits_close(art.prefill(torch.tensor(prompt), slot=0), ref[0], f"{exported.name} prefill of {length} tokens")


def decode_and_compare(art: DecoderRuntime, hf: torch.nn.Module, prompts: dict[int, list[int]], steps: int,
                       what: str, after_prefill=None) -> None:
    """Prefill each slot's prompt (in the order given), then decode all slots together, teacher-forced.

    Slots without a prompt decode a dummy token at position 0 of their own (unchecked) row.
    `after_prefill(art)` may tamper with the state between prefill and decode (sanity tests).
    """
    batch = art.config.batch_size
    refs = {slot: greedy_reference(hf, prompt, steps) for slot, prompt in prompts.items()}
    reset_kv(art)
    for slot, prompt in prompts.items():
        logits = art.prefill(torch.tensor(prompt), slot=slot)
        assert_logits_close(logits, refs[slot][1][0], f"{what}: prefill of slot {slot} ({len(prompt)} tokens)")
    if after_prefill is not None:
        after_prefill(art)
    for step in range(steps):
        tokens, positions = [0] * batch, [0] * batch
        for slot, prompt in prompts.items():
            tokens[slot] = refs[slot][0][step]
            positions[slot] = len(prompt) + step
        logits = art.decode(torch.tensor(tokens), torch.tensor(positions))
        for slot in prompts:
            assert_logits_close(logits[slot], refs[slot][1][step + 1],
                                f"{what}: slot {slot} decode step {step + 1} (position {positions[slot]})")


def test_decode_teacher_forced(exported: Exported):
    # bucket + 1 tokens: runs the 32 bucket with 15 padding positions that decode must overwrite
    prompt = prompt_ids(BUCKETS[0] + 1, exported.vocab, seed=7)
    decode_and_compare(exported.artifact, exported.hf, {0: prompt}, DECODE_STEPS, exported.name)


def test_two_slots_decode_together(exported: Exported):
    long_ = prompt_ids(BUCKETS[-1] - 1, exported.vocab, seed=11)
    short = prompt_ids(9, exported.vocab, seed=12)
    # slot 1 is prefilled first, so slot 0's prefill must leave it intact; slot 0 decodes to the last position
    steps = SEQUENCE_LENGTH - len(long_)
    decode_and_compare(exported.artifact, exported.hf, {1: short, 0: long_}, steps, f"{exported.name} batch 2")


def test_chunked_prefill_every_position(exported: Exported):
    """The default chunk graphs (16 and 32): 20 tokens, then 24 more at start 20 through the 32 chunk, whose
    last rows fall past the 48-position cache (dropped by the graph); every position against transformers."""
    art = exported.artifact
    reset_kv(art)
    prompt = prompt_ids(SEQUENCE_LENGTH - 4, exported.vocab, seed=5)
    with torch.no_grad():
        ref = exported.hf(torch.tensor([prompt])).logits[0].float()
    assert art.config.chunk_plan(24) == [32]
    ours = torch.cat([art.prefill_chunk(torch.tensor(prompt[:20]), 1, 0),
                      art.prefill_chunk(torch.tensor(prompt[20:]), 1, 20)])
    for i in range(len(prompt)):
        assert_logits_close(ours[i], ref[i], f"{exported.name} chunked prefill, position {i}")


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.without or c.unpatched])
def test_feature_changes_transformers_output(name: str):
    """Each architecture feature under test changes transformers' logits well beyond the tolerance
    at the prompt lengths used here, so an implementation that ignored it would fail the tests above."""
    case = CASES[name]
    hf = tiny_hf_model(case.config(), seed=len(name))
    ids = torch.tensor([prompt_ids(BUCKETS[-1] - 1, COMMON_CONFIG["vocab_size"], seed=11)])
    with torch.no_grad():
        ref = hf(ids).logits[0]
        for feature, overrides in case.without.items():
            other = tiny_hf_model(case.config(**overrides), seed=len(name))
            other.load_state_dict(hf.state_dict())
            with pytest.raises(AssertionError):
                assert_logits_close(other(ids).logits[0], ref, f"{name} without {feature}", rtol=100 * 1e-4)
        for feature, unpatch in case.unpatched.items():
            other = tiny_hf_model(case.config(), seed=len(name))
            unpatch(other)
            with pytest.raises(AssertionError):
                assert_logits_close(other(ids).logits[0], ref, f"{name} without {feature}", rtol=100 * 1e-4)


def test_gemma3_ignores_attn_logit_softcapping():
    """transformers' Gemma3Attention never passes attn_logit_softcapping to its attention functions, so the Gemma 3
    description leaves it out (the gemma3-softcap case sets it); if transformers starts applying it, this fails."""
    case = CASES["gemma3-softcap"]
    hf = tiny_hf_model(case.config(), seed=1)
    other = tiny_hf_model(case.config(attn_logit_softcapping=None), seed=1)
    ids = torch.tensor([prompt_ids(BUCKETS[-1] - 1, COMMON_CONFIG["vocab_size"], seed=11)])
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, other(ids).logits)


# ---- the tests above can fail ----------------------------------------------------------------------------


@pytest.mark.parametrize("exported", ["llama"], indirect=True)
def test_sanity_perturbed_weight_fails(exported: Exported):
    llama = exported
    art, name = llama.artifact, "layers.1.attn.o_proj.weight"
    prompt = prompt_ids(BUCKETS[0], llama.vocab, seed=3)
    saved = art.constants[name].clone()
    try:
        art.constants[name][5, 7] += 0.05
        with pytest.raises(AssertionError, match="prefill"):
            decode_and_compare(art, llama.hf, {0: prompt}, 2, "perturbed")
    finally:
        art.constants[name].copy_(saved)
    decode_and_compare(art, llama.hf, {0: prompt}, 2, "restored")


@pytest.mark.parametrize("exported", ["llama"], indirect=True)
def test_sanity_clobbered_slot_fails(exported: Exported):
    llama = exported
    short = prompt_ids(9, llama.vocab, seed=12)
    long_ = prompt_ids(20, llama.vocab, seed=11)

    def clobber_slot_1(art: DecoderRuntime) -> None:
        for spec in art.config.state:
            art.constants[spec.name][1, :, 4] = 0.5  # one earlier position of slot 1

    with pytest.raises(AssertionError, match="slot 1 decode step 1"):
        decode_and_compare(llama.artifact, llama.hf, {1: short, 0: long_}, 2, "clobbered", clobber_slot_1)


@pytest.mark.parametrize("exported", ["llama"], indirect=True)
def test_sanity_wrong_position_fails(exported: Exported):
    llama = exported
    art = llama.artifact
    prompt = prompt_ids(10, llama.vocab, seed=5)
    tokens, ref = greedy_reference(llama.hf, prompt, steps=1)
    reset_kv(art)
    art.prefill(torch.tensor(prompt), slot=0)
    logits = art.decode(torch.tensor([tokens[0], 0]), torch.tensor([len(prompt) + 1, 0]))  # one position too far
    with pytest.raises(AssertionError):
        assert_logits_close(logits[0], ref[1], "wrong position")


# ---- the real AOTInductor backend --------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_aot_llama_prefill_and_decode(tmp_path: Path):
    config = CASES["llama"].config()
    hf = save_tiny_checkpoint(config, tmp_path / "checkpoint", seed=1)
    root = export_tiny(tmp_path / "checkpoint", tmp_path / "artifact", backend="torch-aot",
                       max_context_length=BUCKETS[0], context_buckets=[BUCKETS[0]])
    art = open_runtime(root)
    assert art.config.target.backend == "torch-aot"
    assert all(g.file.endswith(".pt2") for g in art.config.graphs.values())
    prompt = prompt_ids(BUCKETS[0] - 3, config.vocab_size, seed=2)
    decode_and_compare(art, hf, {0: prompt}, 16, "torch-aot llama")
