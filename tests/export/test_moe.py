"""Mixture-of-experts decoders (mixtral, qwen3_moe) against transformers' eager model on the same weights (fp32).

Each case is exported once (torch-export backend, batch 3 with 1- and 2-row decode graphs, buckets 8/16/32) and
generates greedily for three prompts of different lengths together, then for two and one of them (the sub-batch
graphs); decode graphs of few rows run pair by pair (models/moe.py), larger ones and prefill expert by expert.
"""

from __future__ import annotations

import pytest
import torch
from support.moe import CONFIGS, PROMPTS, generate, moe_reference, save_moe_checkpoint
from support.tiny import export_tiny, transformers_greedy

from neuron_infer import NeuronModelForCausalLM

NEW = 16
# The sub-batch graphs and 3 buckets; KV-bucket and chunk graphs only where a case asks (export time).
SHAPES = dict(batch_size=3, decode_batches=[1, 2], sequence_length=64, max_context_length=32,
              context_buckets=[8, 16, 32], kv_buckets=[], chunk_buckets=[])


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    reference = save_moe_checkpoint(CONFIGS[request.param](), root / "ckpt", seed=3)
    extra = dict(kv_buckets=[32], chunk_buckets=[16]) if request.param == "qwen3_moe-6x3" else {}
    art = export_tiny(root / "ckpt", root / "art", **{**SHAPES, **extra})
    model = NeuronModelForCausalLM.from_pretrained(art)
    yield request.param, model, reference, art


def test_greedy_equals_transformers(case):
    name, model, reference, _ = case
    want = [transformers_greedy(reference, p, NEW) for p in PROMPTS]
    assert generate(model, PROMPTS, NEW) == want, name  # full batch of 3, prompts in all three buckets
    assert generate(model, PROMPTS[1:], NEW) == want[1:], name  # the 2-row graph
    assert generate(model, PROMPTS[2:], NEW) == want[2:], name  # the 1-row graph


@pytest.mark.parametrize("case", ["qwen3_moe-6x3"], indirect=True)
def test_chunked_prefill_matches_transformers(case):
    """A 50-token prompt (past max_context_length 32) through the 16-token chunk graphs: every position's logits."""
    _, model, reference, _ = case
    prompt = [int(x) for x in torch.randint(3, 160, (50,), generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        want = reference(torch.tensor([prompt])).logits[0]
    got = model.runtime.prefill_chunk(torch.tensor(prompt), 0, 0)
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


@pytest.mark.parametrize("case", ["qwen3_moe-8x2"], indirect=True)
def test_engine_continuous_batching(case):
    """More requests than slots through the Engine: slots are refilled while others decode."""
    from neuron_infer import Engine, RequestParams

    _, _, reference, art = case
    prompts = [*PROMPTS, PROMPTS[0][:3], PROMPTS[2][:11]]
    with Engine.from_artifact(art, tokenizer=None).start() as engine:
        done = engine.generate(prompts, RequestParams(max_tokens=10, ignore_eos=True))
    assert [c.token_ids for c in done] == [transformers_greedy(reference, p, 10) for p in prompts]


def test_norm_topk_prob_is_visible():
    """Renormalising the top-k weights changes transformers' tokens at these sizes, so the greedy tests see it."""
    config = CONFIGS["qwen3_moe-6x3"]()
    plain, renormed = moe_reference(config, seed=3), moe_reference(config.__class__(**{**config.to_dict(),
                                                                                      "norm_topk_prob": True}), seed=3)
    assert [transformers_greedy(plain, p, NEW) for p in PROMPTS] != [transformers_greedy(renormed, p, NEW)
                                                                      for p in PROMPTS]
