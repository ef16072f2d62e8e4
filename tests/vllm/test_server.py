"""vLLM's OpenAI-compatible server started by `neuron-vllm serve` on SmolLM2, driven with the official
`openai` client: completions, chat with SmolLM2's template, streaming, /v1/models, bounded load,
a client that disconnects mid-stream, and limits. Answers are compared with neuron-infer's generate
on the same artifact (itself checked against transformers in test_offline.py) or with transformers."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from neuron_infer import NeuronModelForCausalLM

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

NAME = "smollm2"
TEXTS = ["The capital of France is", "Here is a list of fruits: apple,", "def add(a, b):", "The sun rises in the",
         "Water boils at", "My favourite colour is", "In 1492, Columbus", "Translate to French: good morning",
         "The opposite of hot is", "Roses are red, violets are", "A triangle has", "The largest planet is",
         "To make tea, first", "Python is a programming language that", "The moon orbits", "Once upon a time"]


@pytest.fixture(scope="module")
def server(smollm2_server):
    return smollm2_server  # shared with test_sampling_parity and test_long_prompts_server (conftest)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=180, max_retries=0)


@pytest.fixture(scope="module")
def reference(smollm2_artifact):
    """Greedy continuations from neuron-infer's generate, batched 8 at a time (the compiled batch)."""
    # (trust_remote_code: an artifact reused from an earlier session, NEURON_VLLM_TEST_ARTIFACTS, is not in this
    # session's trust store; one exported in this session is trusted either way)
    model = NeuronModelForCausalLM.from_pretrained(smollm2_artifact, trust_remote_code=True)

    def run(prompts: list[list[int]], n: int, eos: bool = False) -> list[list[int]]:
        width = max(map(len, prompts))
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
        kwargs = {} if eos else {"eos_token_id": None}
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, **kwargs)
        return [_cut_eos(out[i, width:].tolist(), model.generation_config.eos_token_id if eos else None)
                for i in range(len(prompts))]

    return run


def _cut_eos(tokens: list[int], eos: int | list[int] | None) -> list[int]:
    stops = set() if eos is None else set(eos if isinstance(eos, list) else [eos])
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


def complete(client, prompt, n: int, **extra):
    return client.completions.create(model=NAME, prompt=prompt, max_tokens=n, temperature=0,
                                     extra_body={"ignore_eos": True, "return_token_ids": True, **extra})


def test_models_lists_the_served_name_and_length(client):
    (model,) = client.models.list().data
    assert model.id == NAME
    assert model.model_extra["max_model_len"] == 256


def test_completion_is_greedy_neuron_infer(client, tokenizer, reference):
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS[:3]]
    want = reference(prompts, 10)
    for prompt, expected in zip(prompts, want):
        choice = complete(client, prompt, 10).choices[0]
        assert choice.model_extra["token_ids"] == expected
        assert choice.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert choice.finish_reason == "length"


def test_chat_uses_smollm2_template_and_stops_at_eos(client, tokenizer, reference):
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    (want,) = reference([list(prompt["input_ids"])], 40, eos=True)
    reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=40, temperature=0,
                                           extra_body={"return_token_ids": True})
    choice = reply.choices[0]
    assert choice.message.content == tokenizer.decode(want, skip_special_tokens=True)
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop" and len(want) < 40, "the reference should stop at EOS before 40 tokens"


def test_streaming_yields_the_same_text_in_pieces(client, tokenizer, reference):
    prompt = tokenizer(TEXTS[5])["input_ids"]
    (want,) = reference([prompt], 10)
    chunks = list(client.completions.create(model=NAME, prompt=prompt, max_tokens=10, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) > 3, f"not streamed: {texts}"
    assert "".join(texts) == tokenizer.decode(want, skip_special_tokens=True)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_logprobs_are_transformers_log_softmax(client, tokenizer, smollm2_reference):
    prompt = tokenizer(TEXTS[0])["input_ids"]
    choice = complete(client, prompt, 3, logprobs=3).choices[0]
    with torch.no_grad():
        ids = torch.tensor([prompt + choice.model_extra["token_ids"]])
        ref = smollm2_reference(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
    top = choice.logprobs.top_logprobs
    assert len(top) == 3
    for pos, entry in enumerate(top):
        assert len(entry) == 3
        sampled = choice.model_extra["token_ids"][pos]
        assert choice.logprobs.token_logprobs[pos] == pytest.approx(float(ref[pos, sampled]), abs=2e-3)
        want_top = sorted(ref[pos].topk(3).values.tolist(), reverse=True)
        assert sorted(entry.values(), reverse=True) == pytest.approx(want_top, abs=2e-3)


def test_64_requests_at_concurrency_8_are_all_right_and_free_every_slot(client, server, tokenizer, reference):
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
    lengths = [3 + i % 4 for i in range(len(prompts))]  # 3..6 tokens: requests leave at different steps
    # Greedy continuations are prefixes of longer ones: one reference run, cut per prompt.
    expected = {i: toks[: lengths[i]] for i, toks in enumerate(reference(prompts, max(lengths)))}
    busy_seen, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                busy_seen[0] = max(busy_seen[0], len(server.status()["busy"]))
            except (OSError, json.JSONDecodeError):
                pass
            time.sleep(0.05)

    def one(k: int) -> tuple[int, list[int]]:
        i = k % len(prompts)
        return i, complete(client, prompts[i], lengths[i]).choices[0].model_extra["token_ids"]

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.monotonic()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(64), timeout=600))
    finally:
        stop.set()
        watcher.join()
    wrong = [(i, got, expected[i]) for i, got in results if got != expected[i]]
    assert len(results) == 64 and not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[:2]}"
    assert busy_seen[0] >= 4, f"at most {busy_seen[0]} slots were ever busy: requests were not batched"
    status = server.wait_idle(timeout=30)
    assert status["busy"] == {} and status["free"] == 8, status
    print(f"64 requests at concurrency 8 in {time.monotonic() - start:.1f} s; up to {busy_seen[0]} slots busy")


def test_a_client_that_disconnects_mid_stream_frees_its_slot(client, server, tokenizer, reference):
    prompt = tokenizer(TEXTS[7])["input_ids"]
    body = {"model": NAME, "prompt": prompt, "max_tokens": 200, "temperature": 0, "stream": True, "ignore_eos": True}
    events = 0
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{server.url}/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            events += line.startswith("data: ")
            if events == 3:
                assert len(server.status()["busy"]) == 1, "the streaming request should hold a slot"
                break  # leaving the with-blocks closes the connection mid-stream
    status = server.wait_idle(timeout=30)
    assert status["busy"] == {}, f"the disconnected request still holds a slot: {status}"
    # And the server still answers, correctly.
    (want,) = reference([prompt], 6)
    assert complete(client, prompt, 6).choices[0].model_extra["token_ids"] == want


@pytest.mark.parametrize(("n_tokens", "match"), [(256, "max_tokens must be at least 1"), (300, "256")])
def test_an_overlong_prompt_gets_a_400_and_the_server_stays_up(client, server, tokenizer, reference, n_tokens, match):
    long_prompt = (tokenizer(TEXTS[15])["input_ids"] * 100)[:n_tokens]
    with pytest.raises(openai.BadRequestError, match=match):
        complete(client, long_prompt, 4)
    assert server.alive()
    prompt = tokenizer(TEXTS[1])["input_ids"]
    (want,) = reference([prompt], 5)
    assert complete(client, prompt, 5).choices[0].model_extra["token_ids"] == want
