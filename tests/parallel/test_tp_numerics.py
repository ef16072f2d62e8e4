"""Greedy tokens of tensor-parallel artifacts equal transformers' eager model on the same weights (fp32).

Each case runs several prompts at once (batch > 1) whose lengths fall in every bucket, through
`NeuronModelForCausalLM.generate`: its ranks are processes that `from_pretrained` starts, and the
decode steps go through the full-batch graph and the 1- and 2-row sub-batch graphs.
"""

from __future__ import annotations

import pytest
import torch
from support.tiny import transformers_greedy
from tp_testlib import export_tp

from neuron_infer import NeuronModelForCausalLM
from neuron_infer.parallel import MultiRankRuntime

# lengths 5, 13 and 27 fall in buckets 8, 16 and 32
PROMPTS = [[5, 9, 33, 7, 100], [11, 3, 150, 42, 8, 19, 77, 61, 2, 90, 14, 27, 6],
           [int(x) for x in torch.randint(3, 160, (27,), generator=torch.Generator().manual_seed(1))]]
NEW = 20


def generate(model: NeuronModelForCausalLM, prompts: list[list[int]], n: int = NEW) -> list[list[int]]:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding, as transformers wants for batched generation
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=None)
    return [out[i, width:].tolist() for i in range(len(prompts))]


@pytest.fixture(scope="module", params=["llama", "qwen3", "mistral", "gemma3"])
def case(request, tp_checkpoints, tmp_path_factory):
    path, reference = tp_checkpoints[request.param]
    art = export_tp(path, tmp_path_factory.mktemp("tp2") / request.param, tp=2)
    model = NeuronModelForCausalLM.from_pretrained(art)
    yield request.param, model, reference
    model.runtime.close()


def test_tp2_greedy_equals_transformers(case):
    name, model, reference = case
    assert isinstance(model.runtime, MultiRankRuntime) and len(model.runtime.pids) == 2
    want = [transformers_greedy(reference, p, NEW) for p in PROMPTS]
    assert generate(model, PROMPTS) == want, name  # full batch of 3
    assert generate(model, PROMPTS[1:]) == want[1:], name  # the 2-row graph
    assert generate(model, PROMPTS[2:]) == want[2:], name  # the 1-row graph


def test_tp4_replicates_kv_heads(tp_checkpoints, tmp_path):
    """4 ranks, 2 kv heads: each kv head lives on two ranks, beside the q heads of its group."""
    path, reference = tp_checkpoints["llama"]
    art = export_tp(path, tmp_path / "tp4", tp=4, batch_size=2, decode_batches=[1])
    model = NeuronModelForCausalLM.from_pretrained(art)
    try:
        assert len(model.runtime.pids) == 4
        assert generate(model, PROMPTS[:2]) == [transformers_greedy(reference, p, NEW) for p in PROMPTS[:2]]
    finally:
        model.runtime.close()


def test_aot_tp2_generate_and_engine(tiny_tp2_artifact, tiny_reference):
    """The AOTInductor packages, collectives compiled in: generate (batch 2) and the Engine (more requests than
    slots, continuous batching) both give transformers' tokens."""
    from neuron_infer import Engine, RequestParams

    prompts = [[1, 400, 1203, 77], [1, 9, 18000, 3, 5, 2048, 11, 310, 40000, 12]]
    want = [transformers_greedy(tiny_reference, p, 12) for p in prompts]
    model = NeuronModelForCausalLM.from_pretrained(tiny_tp2_artifact)
    try:
        assert generate(model, prompts, 12) == want
        # The compiled chunk graph (its all-reduces inside), the prompt at an offset after a copied prefix.
        model.runtime.prefill_chunk(torch.tensor(prompts[1][:4]), 0, 0)
        model.runtime.copy_kv(0, 1, 4)
        logits = model.runtime.prefill_chunk(torch.tensor(prompts[1][4:]), 1, 4)
        assert logits.shape == (6, tiny_reference.config.vocab_size) and int(logits[-1].argmax()) == want[1][0]
    finally:
        model.runtime.close()
    with Engine.from_artifact(tiny_tp2_artifact, tokenizer=None).start() as engine:
        done = engine.generate([*prompts, prompts[0]], RequestParams(max_tokens=12, ignore_eos=True))
        assert [c.token_ids for c in done] == [*want, want[0]]
        engine.runtime.close()


def test_tp2_chunked_prefill_and_copy_kv_match_transformers(case):
    """A 50-token prompt (past max_context_length 32) through the chunk graphs of every rank, then a prefix copied
    by every rank into another slot and continued: the logits of every position against transformers."""
    name, model, reference = case
    runtime = model.runtime
    prompt = [int(x) for x in torch.randint(3, 160, (50,), generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        ref = reference(torch.tensor([prompt])).logits[0].float()
    tol = 1e-4 * ref.abs().max().item()
    assert runtime.max_prompt_length == 63
    assert (runtime.prefill_chunk(torch.tensor(prompt), 0, 0) - ref).abs().max().item() <= tol, name
    runtime.copy_kv(0, 2, 30)
    assert (runtime.prefill_chunk(torch.tensor(prompt[30:]), 2, 30) - ref[30:]).abs().max().item() <= tol, name
    with pytest.raises(ValueError, match=r"positions \[60, 70\) do not fit"):
        runtime.prefill_chunk(torch.tensor(prompt[:10]), 1, 60)
