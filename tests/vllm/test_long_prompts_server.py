"""Long prompts, vLLM's chunked prefill, prefix caching and the KV cache vLLM schedules within, through the openai
client against `neuron-vllm serve` on SmolLM2 (batch 8, sequence_length 256, prompt buckets up to 128, chunked-prefill
graphs), compared with vLLM's own CPU backend on the same weights (greedy tokens).

The session's SmolLM2 server (conftest) runs with --max-num-batched-tokens 64: vLLM must split every prompt over 64 tokens into chunks of at most
64 scheduled tokens a step (it refuses such a prompt when it cannot chunk), and the runner encodes each chunk at its
offset. vLLM's prefix caching is on (its default)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from vllm_testlib import SMOLLM2_SHAPES

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

NAME = "smollm2"
STORY = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the steps as his father had "
         "taught him, and wrote in a worn leather logbook the colour of the sea, the direction of the wind, the ships "
         "that passed and the birds that rested on the railing. ")
QUESTIONS = ["What did he count?", "Who taught him?", "What did he write in?", "When did he climb?",
             "What rested on the railing?", "What passed by?", "Which colour did he note?", "What was the logbook?"]


@pytest.fixture(scope="module")
def server(smollm2_server):
    return smollm2_server  # started with --max-num-batched-tokens 64 (conftest)


@pytest.fixture(scope="module")
def neuron(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def reference(vllm_cpu_smollm2) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vllm_cpu_smollm2.url}/v1", api_key="unused", timeout=300, max_retries=0)


def greedy(client: openai.OpenAI, prompt: str, n: int = 8) -> tuple[list[int], list[int]]:
    """(prompt token ids, generated token ids)."""
    choice = client.completions.create(model=NAME, prompt=prompt, max_tokens=n, temperature=0,
                                       extra_body={"return_token_ids": True, "ignore_eos": True}).choices[0]
    return choice.model_extra["prompt_token_ids"], choice.model_extra["token_ids"]


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    assert values, f"{name} not in /metrics"
    return sum(values)


def test_vllm_plans_exactly_the_artifacts_kv_cache(server):
    """batch_size x ceil(sequence_length / block_size) blocks of 16 tokens, plus vLLM's null block."""
    s = SMOLLM2_SHAPES
    want = s["batch_size"] * (s["sequence_length"] // 16) + 1
    log = server.log.read_text()
    assert f"num_gpu_blocks_override={want}" in log, log[-3000:]
    info = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert f'num_gpu_blocks="{want}"' in info


def test_a_prompt_over_the_largest_bucket_is_chunked_by_vllm_and_matches_vllm_cpu(neuron, reference, tokenizer):
    prompt = STORY * 3 + "Question: What did the keeper write down? Answer:"
    ids, got = greedy(neuron, prompt)
    assert SMOLLM2_SHAPES["max_context_length"] < len(ids) < SMOLLM2_SHAPES["sequence_length"] - 8
    assert got == greedy(reference, prompt)[1]


def test_shared_prefixes_are_reused_and_answers_match_vllm_cpu(server, neuron, reference):
    """Eight concurrent requests sharing a 150-token prefix: the first encodes it, the others reuse its rows (copied
    from a busy slot, or in place from a finished one), and every answer is vLLM-CPU's."""
    before = server.status()["prefix_cache"]
    vllm_hits = metric(server, "vllm:prefix_cache_hits_total")
    prompts = [STORY * 2 + f"Question: {q} Answer:" for q in QUESTIONS]
    greedy(neuron, prompts[0])  # the prefix is encoded once before the burst
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: greedy(neuron, p), prompts))
    want = [greedy(reference, p) for p in prompts]
    assert [g[1] for g in got] == [w[1] for w in want]
    after = server.wait_idle()["prefix_cache"]
    shared = len(got[0][0]) - 12  # the prompts differ only in their last dozen tokens
    assert after["enabled"] is True
    assert after["hits"] - before["hits"] >= len(prompts)
    assert after["hit_tokens"] - before["hit_tokens"] >= len(prompts) * shared
    assert metric(server, "vllm:prefix_cache_hits_total") > vllm_hits, "vLLM's own prefix cache counted hits too"
