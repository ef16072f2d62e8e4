"""vLLM's sampling features on a neuron artifact, through the openai client against `neuron-vllm serve`, compared
with vLLM's own CPU backend serving the same SmolLM2 weights: greedy tokens under penalties, min_tokens, logit_bias,
bad_words, allowed_token_ids and min_p; logprobs; seeded sampling; structured outputs (JSON schema, regex,
choice); n > 1. One neuron server for the module, the vLLM-CPU reference once per session (conftest)."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

NAME = "smollm2"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def neuron(smollm2_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="unused", timeout=180, max_retries=0)


@pytest.fixture(scope="module")
def reference(vllm_cpu_smollm2) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vllm_cpu_smollm2.url}/v1", api_key="unused", timeout=180, max_retries=0)


def complete(client: openai.OpenAI, n_tokens: int = 8, prompt: str = PROMPT, **params):
    extra = {"return_token_ids": True, **params.pop("extra_body", {})}
    params.setdefault("temperature", 0)
    return client.completions.create(model=NAME, prompt=prompt, max_tokens=n_tokens, extra_body=extra,
                                     **params).choices


def token_ids(choice) -> list[int]:
    return choice.model_extra["token_ids"]


def both(neuron, reference, **params) -> tuple[list, list]:
    return complete(neuron, **params), complete(reference, **params)


def test_greedy_without_sampling_options_matches_vllm_cpu(neuron, reference):
    (got,), (want,) = both(neuron, reference, extra_body={"ignore_eos": True})
    assert token_ids(got) == token_ids(want)


@pytest.mark.parametrize("params", [
    dict(presence_penalty=1.5), dict(frequency_penalty=1.2), dict(extra_body={"repetition_penalty": 1.4}),
    dict(extra_body={"min_p": 0.2}, temperature=0.8, seed=3),
    dict(extra_body={"top_k": 20}, top_p=0.9, temperature=1.0, seed=11),
], ids=["presence", "frequency", "repetition", "min_p-seeded", "top_k-top_p-seeded"])
def test_penalties_and_seeded_sampling_match_vllm_cpu(neuron, reference, params):
    params = {**params, "extra_body": {"ignore_eos": True, **params.get("extra_body", {})}}
    (got,), (want,) = both(neuron, reference, n_tokens=12, **params)
    assert token_ids(got) == token_ids(want)


def test_min_tokens_holds_back_eos_like_vllm_cpu(neuron, reference):
    (short,) = complete(neuron, n_tokens=40, prompt="Q: Is the sky blue? Answer yes or no.\nA:")
    assert short.finish_reason == "stop", "the prompt should end early without min_tokens"
    n = len(token_ids(short)) + 6
    (got,), (want,) = both(neuron, reference, n_tokens=40, prompt="Q: Is the sky blue? Answer yes or no.\nA:",
                           extra_body={"min_tokens": n})
    assert len(token_ids(got)) >= n
    assert token_ids(got) == token_ids(want)


def test_logit_bias_bad_words_and_allowed_token_ids_match_vllm_cpu(neuron, reference, tokenizer):
    (plain,) = complete(neuron, extra_body={"ignore_eos": True})
    assert "Paris" in plain.text
    forced = tokenizer(" Rome")["input_ids"][0]
    (got,), (want,) = both(neuron, reference, logit_bias={str(forced): 100}, extra_body={"ignore_eos": True})
    assert token_ids(got)[0] == forced and token_ids(got) == token_ids(want)
    (got,), (want,) = both(neuron, reference, extra_body={"ignore_eos": True, "bad_words": ["Paris"]})
    assert "Paris" not in got.text and token_ids(got) == token_ids(want)
    allowed = tokenizer(" one two three four five six seven")["input_ids"]
    (got,), (want,) = both(neuron, reference, extra_body={"ignore_eos": True, "allowed_token_ids": allowed})
    assert set(token_ids(got)) <= set(allowed) and token_ids(got) == token_ids(want)


def test_logprobs_are_vllm_cpus(neuron, reference):
    (got,), (want,) = both(neuron, reference, n_tokens=4, logprobs=5, extra_body={"ignore_eos": True})
    assert token_ids(got) == token_ids(want)
    assert got.logprobs.token_logprobs == pytest.approx(want.logprobs.token_logprobs, abs=2e-3)
    for ours, theirs in zip(got.logprobs.top_logprobs, want.logprobs.top_logprobs):
        assert ours.keys() == theirs.keys()
        assert list(ours.values()) == pytest.approx(list(theirs.values()), abs=2e-3)


def test_a_seed_reproduces_and_n_fans_out(neuron):
    first = complete(neuron, n_tokens=10, temperature=1.0, seed=5, n=3, extra_body={"ignore_eos": True})
    again = complete(neuron, n_tokens=10, temperature=1.0, seed=5, n=3, extra_body={"ignore_eos": True})
    assert len(first) == 3 and [c.index for c in first] == [0, 1, 2]
    assert sorted(c.text for c in first) == sorted(c.text for c in again)
    assert len({c.text for c in first}) > 1, "n=3 samples should differ"


def test_stop_strings_cut_the_text(neuron):
    (plain,) = complete(neuron, n_tokens=12, extra_body={"ignore_eos": True})
    word = plain.text.split()[1]
    (cut,) = complete(neuron, n_tokens=12, stop=[word], extra_body={"ignore_eos": True})
    assert cut.finish_reason == "stop" and cut.text == plain.text[: plain.text.index(word)]


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "country"],
          "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}}}


def chat(client: openai.OpenAI, content: str, **params):
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": content}],
                                           max_tokens=60, temperature=0, **params)
    return reply.choices[0]


def test_structured_outputs_json_schema_regex_and_choice(neuron, reference):
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}
    got = chat(neuron, "Name a European capital as JSON.", response_format=fmt)
    jsonschema.validate(json.loads(got.message.content), SCHEMA)
    assert got.message.content == chat(reference, "Name a European capital as JSON.", response_format=fmt).message.content
    ask = 'Reply with exactly this JSON object: {"ok": true}'
    got = chat(neuron, ask, response_format={"type": "json_object"})
    assert got.finish_reason == "stop" and isinstance(json.loads(got.message.content), dict), got.message.content
    assert got.message.content == chat(reference, ask, response_format={"type": "json_object"}).message.content
    pattern = r"[A-Z][a-z]{2,8}, [0-9]{4}"
    got = chat(neuron, "A city and a year?", extra_body={"structured_outputs": {"regex": pattern}})
    assert re.fullmatch(pattern, got.message.content), got.message.content
    choices = ["yes", "no", "maybe"]
    got = chat(neuron, "Is water wet?", extra_body={"structured_outputs": {"choice": choices}})
    assert got.message.content in choices
    want = chat(reference, "Is water wet?", extra_body={"structured_outputs": {"choice": choices}})
    assert got.message.content == want.message.content


def test_prompt_logprobs_match_vllm_cpu(neuron, reference):
    """Every prompt position's logprob of the next prompt token, and the top 2, through the chunked-prefill graphs."""
    params = dict(n_tokens=2, prompt="The lighthouse keeper climbed the stairs and wrote in his logbook that",
                  extra_body={"prompt_logprobs": 2, "ignore_eos": True})
    (got,), (want,) = both(neuron, reference, **params)
    got, want = got.model_extra["prompt_logprobs"], want.model_extra["prompt_logprobs"]
    assert got[0] is None and want[0] is None and len(got) == len(want) > 10
    for position, (g, w) in enumerate(zip(got[1:], want[1:]), start=1):
        assert set(g) == set(w), f"position {position}: tokens {sorted(g)} != {sorted(w)}"
        for token, entry in g.items():
            assert entry["rank"] == w[token]["rank"]
            assert entry["logprob"] == pytest.approx(w[token]["logprob"], abs=2e-3), f"position {position}"
