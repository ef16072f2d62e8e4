"""vLLM's offline LLM API through the plugin: greedy tokens equal neuron-infer's generate and
transformers, with max_num_seqs=2 so six requests of different lengths join and leave the batch."""

from __future__ import annotations

import pytest
import torch
from support.tiny import transformers_greedy
from vllm_testlib import run_offline

from neuron_infer import NeuronModelForCausalLM

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TINY_PROMPTS = [[1, 17, 33, 5, 90, 41, 7], [1, 120, 3], [1, 9, 9, 14, 15, 26, 53, 58, 97, 93, 23],
                [1, 500, 8000, 44], [1, *range(300, 320)], [1, 2000]]
TINY_MAX_TOKENS = [9, 14, 6, 11, 8, 12]
SMOL_TEXTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to synthesize "
    "foods from carbon dioxide and water. Explain it to a child in two sentences:",
    "1, 2, 3, 4,",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who "
    "repaired every clock in the region. One winter morning, a stranger knocked on his door carrying a broken "
    "pocket watch that ticked backwards. The stranger said the watch had belonged to his grandmother, who had "
    "told him that whoever repaired it would be granted one hour of their past to live again. The clockmaker",
]
SMOL_MAX_TOKENS = [12, 16, 10, 14, 8, 16]


def neuron_greedy(artifact, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    """neuron-infer's own generate, all prompts in one left-padded call, cut to each request's length."""
    model = NeuronModelForCausalLM.from_pretrained(artifact)
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max(max_tokens), eos_token_id=None)
    return [out[i, width : width + n].tolist() for i, n in enumerate(max_tokens)]


def test_tiny_model_greedy_and_logprobs_match_references(tiny_artifact, tiny_reference, tmp_path):
    spec = dict(model=str(tiny_artifact), max_num_seqs=2, max_model_len=64, dtype="float32", prompts=TINY_PROMPTS,
                max_tokens=TINY_MAX_TOKENS, logprobs=2)
    got = run_offline(spec, tmp_path)
    assert got["platform"] == "NeuronPlatform"
    neuron = neuron_greedy(tiny_artifact, TINY_PROMPTS, TINY_MAX_TOKENS)
    for i, (prompt, n) in enumerate(zip(TINY_PROMPTS, TINY_MAX_TOKENS)):
        assert got["token_ids"][i] == transformers_greedy(tiny_reference, prompt, n), f"prompt {i} vs transformers"
        assert got["token_ids"][i] == neuron[i], f"prompt {i} vs neuron-infer generate"
    # Logprobs: vLLM's are the raw log-softmax of the model's logits; compare with transformers'.
    prompt, tokens = TINY_PROMPTS[0], got["token_ids"][0]
    with torch.no_grad():
        logits = tiny_reference(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
    ref = logits.log_softmax(-1)
    for pos, entry in enumerate(got["logprobs"][0]):
        assert str(tokens[pos]) in entry and len(entry) >= 2
        for tok, value in entry.items():
            assert value == pytest.approx(float(ref[pos, int(tok)]), abs=1e-3), f"position {pos} token {tok}"
        top2 = ref[pos].topk(2).indices.tolist()
        assert {str(t) for t in top2} <= set(entry), f"position {pos}: top-2 {top2} not in {sorted(entry)}"


def test_smollm2_greedy_matches_neuron_infer_and_transformers(smollm2_artifact, smollm2_reference, tokenizer,
                                                               tmp_path):
    prompts = [tokenizer(t)["input_ids"] for t in SMOL_TEXTS]
    assert len({len(p) for p in prompts}) == len(prompts), "prompt lengths should differ"
    assert max(map(len, prompts)) > 64, "one prompt should need the larger context bucket"
    spec = dict(model=str(smollm2_artifact), max_num_seqs=2, max_model_len=256, dtype="float32", prompts=prompts,
                max_tokens=SMOL_MAX_TOKENS)
    got = run_offline(spec, tmp_path)
    neuron = neuron_greedy(smollm2_artifact, prompts, SMOL_MAX_TOKENS)
    for i, (prompt, n) in enumerate(zip(prompts, SMOL_MAX_TOKENS)):
        assert got["token_ids"][i] == neuron[i], f"prompt {i} vs neuron-infer generate"
        assert got["token_ids"][i] == transformers_greedy(smollm2_reference, prompt, n), f"prompt {i} vs transformers"
        assert got["text"][i] == tokenizer.decode(neuron[i], skip_special_tokens=True)
