"""Tool calling through `neuron-vllm serve` with vLLM's serving flags passed through (`--enable-auto-tool-choice
--tool-call-parser hermes --structured-outputs-config ...`), on a tiny random Llama whose tokenizer (SmolLM2's, plus
`<tool_call>`/`</tool_call>`) carries a Hermes-style tools chat template: with tool_choice required or named, vLLM
forces the arguments through structured outputs, so even a random model's calls parse and fit the schema. Then an
artifact compiled with on-device sampling: what its graph cannot do is refused with HTTP 400 naming the parameter."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import openai
import pytest
from support.smollm2 import smollm2_tokenizer
from support.tiny import export_tiny, make_tiny_checkpoint
from tokenizers import AddedToken
from vllm_testlib import serve

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# Qwen2.5's tool format (which vLLM's hermes parser reads), cut to what the tests use.
TOOLS_TEMPLATE = """{%- if tools %}<|im_start|>system
# Tools

You may call one or more functions. Function signatures within <tools></tools>:
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools>

For each call, return {"name": <function-name>, "arguments": <args-json-object>} within <tool_call></tool_call> tags.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' %}<|im_start|>assistant
{% if message.content %}{{ message.content }}{% endif %}
{%- for call in message.tool_calls | default([]) %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]}, "unit": {"enum": ["celsius", "fahrenheit"]}}}
TIME = {"type": "object", "additionalProperties": False, "required": ["zone"],
        "properties": {"zone": {"enum": ["UTC", "CET"]}}}
# vLLM 0.32 forces the call envelope (<tool_call>{"name": ...) for tool_choice required/named, and the arguments'
# schema only for tools marked strict (or with --tool-strict-level parameter).
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER, "strict": True}},
         {"type": "function", "function": {"name": "get_time", "description": "Time in a zone", "parameters": TIME,
                                           "strict": True}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL_SHAPES = dict(batch_size=2, sequence_length=512, max_context_length=384, context_buckets=[128, 384])


@pytest.fixture(scope="module")
def tools_artifact(tmp_path_factory) -> Path:
    tok = smollm2_tokenizer()
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                    AddedToken("</tool_call>", special=False, normalized=False)])
    tok.chat_template = TOOLS_TEMPLATE
    root = tmp_path_factory.mktemp("tools")
    ckpt = make_tiny_checkpoint(root / "ckpt", tokenizer=tok, max_position_embeddings=512)
    return export_tiny(ckpt, root / "artifact", **TOOL_SHAPES)


@pytest.fixture(scope="module")
def tools_client(tools_artifact, tmp_path_factory) -> openai.OpenAI:
    flags = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes",
             "--structured-outputs-config", json.dumps({"backend": "xgrammar"})]
    with serve(tools_artifact, tmp_path_factory.mktemp("tools-server"), "--served-model-name", "tiny", *flags) as s:
        yield openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", timeout=180, max_retries=0)


@pytest.fixture(scope="module")
def no_whitespace(tools_artifact) -> dict[str, int]:
    """logit_bias that bans whitespace-only tokens: the tool-call grammar allows whitespace between JSON tokens
    (vLLM's structural tags ignore disable_any_whitespace), and a random model would pick it forever."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tools_artifact)
    return {str(i): -100 for i in range(len(tok)) if (text := tok.decode([i])) and not text.strip()}


def call(client: openai.OpenAI, tool_choice, bias: dict[str, int] | None = None, **params):
    # One call: the grammar then ends the answer after it (a random model would not pick EOS itself).
    params = {"parallel_tool_calls": False, "max_tokens": 100, "temperature": 0, "logit_bias": bias, **params}
    return client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice,
                                          **params).choices[0]


def test_tool_choice_required_and_named_give_parsed_calls_that_fit_the_schema(tools_client, no_whitespace):
    choice = call(tools_client, "required", no_whitespace)
    assert choice.message.tool_calls, choice.message
    for tc in choice.message.tool_calls:
        jsonschema.validate(json.loads(tc.function.arguments), SCHEMAS[tc.function.name])
    named = {"type": "function", "function": {"name": "get_time"}}
    for seed in (1, 2):  # sampled too: the grammar, not greedy luck, keeps the call valid
        choice = call(tools_client, named, no_whitespace, seed=seed, temperature=1.0)
        (tc,) = choice.message.tool_calls
        assert tc.function.name == "get_time"
        jsonschema.validate(json.loads(tc.function.arguments), TIME)


def test_tool_choice_auto_answers(tools_client):
    choice = call(tools_client, "auto", max_tokens=8)
    assert choice.finish_reason in ("length", "stop", "tool_calls")


@pytest.fixture(scope="module")
def device_client(tiny_checkpoint, tmp_path_factory) -> openai.OpenAI:
    artifact = export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("ods") / "tiny-ods", on_device_sampling=True)
    with serve(artifact, tmp_path_factory.mktemp("ods-server"), "--served-model-name", "tiny") as s:
        yield openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", timeout=180, max_retries=0)


@pytest.mark.parametrize(("name", "params"), [
    ("presence_penalty", dict(presence_penalty=0.5)), ("repetition_penalty", dict(extra_body={"repetition_penalty": 1.2})),
    ("min_p", dict(extra_body={"min_p": 0.1})), ("min_tokens", dict(extra_body={"min_tokens": 2})),
    ("logit_bias", dict(logit_bias={"5": 10})), ("bad_words", dict(extra_body={"bad_words": ["the"]})),
    ("allowed_token_ids", dict(extra_body={"allowed_token_ids": [5, 6]})), ("logprobs", dict(logprobs=1)),
    ("structured_outputs", dict(extra_body={"structured_outputs": {"choice": ["a", "b"]}})),
])
def test_on_device_sampling_refuses_what_the_graph_cannot_do(device_client, name, params):
    with pytest.raises(openai.BadRequestError, match=name) as err:
        device_client.completions.create(model="tiny", prompt="Hello", max_tokens=2, **params)
    assert err.value.status_code == 400 and "on_device_sampling" in str(err.value)


def test_on_device_sampling_serves_temperature_top_k_top_p_seed_n_and_stop(device_client):
    kwargs = dict(model="tiny", prompt="Hello", max_tokens=6, temperature=0.9, top_p=0.9, seed=4, n=2,
                  extra_body={"top_k": 40, "ignore_eos": True})
    first = device_client.completions.create(**kwargs).choices
    again = device_client.completions.create(**kwargs).choices
    assert len(first) == 2 and sorted(c.text for c in first) == sorted(c.text for c in again)
