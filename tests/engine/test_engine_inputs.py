"""Engine.add_request refuses prompts and parameters a cast would silently change, with one RequestError each."""

from __future__ import annotations

import pytest
import torch
from support.tiny import transformers_greedy

from neuron_infer.engine import Engine, RequestError, RequestParams

PROMPT = [1, 17, 33, 5, 90, 41, 7]
VOCAB = 49152  # SmolLM2's tokenizer


BAD_PROMPTS = {
    "float id": ([1, 2.5, 3], r"'prompt' = '2.5 at position 1'.*Allowed: a string, or token ids"),
    "bool id": ([1, True], r"'prompt' = 'True at position 1'"),
    "string ids": (["1", "2"], r"'prompt' = \"'1' at position 0\""),
    "None id": ([1, None], r"'prompt' = 'None at position 1'"),
    "nested list": ([[1, 2], [3]], r"'prompt' = '\[1, 2\] at position 0'"),
    "float tensor": (torch.tensor([1.0, 2.0]), r"'prompt' = 'a torch.float32 tensor of shape \(2,\)'"),
    "bool tensor": (torch.tensor([True, False]), r"'prompt' = 'a torch.bool tensor of shape \(2,\)'"),
    "2-D tensor": (torch.tensor([[1, 2]]), r"'prompt' = 'a torch.int64 tensor of shape \(1, 2\)'.*one prompt"),
    "not a sequence": (5, r"'prompt' = 5 is not allowed. Allowed: a string, or token ids"),
    "negative id": ([1, 2, -5], r"'prompt' = 'token -5 at position 2'.*Allowed: token ids in \[0, 49152\)"),
    "id past the vocabulary": ([1, VOCAB, 3], rf"'prompt' = 'token {VOCAB} at position 1'.*\[0, {VOCAB}\)"),
    "tensor id past the vocabulary": (torch.tensor([1, 2, 3, VOCAB + 7]), rf"'token {VOCAB + 7} at position 3'"),
}


@pytest.mark.parametrize("case", BAD_PROMPTS)
def test_a_bad_prompt_is_refused_naming_the_token_and_its_place(engine, case):
    prompt, match = BAD_PROMPTS[case]
    with pytest.raises(RequestError, match=match):
        engine.add_request(prompt, RequestParams(max_tokens=2))
    assert engine.stats().waiting == 0, "a refused request must leave no trace"


BAD_PARAMS = {
    "max_tokens": (dict(max_tokens=2.5), r"'max_tokens' = 2.5.*an integer >= 1"),
    "top_k": (dict(temperature=0.8, top_k=1.5), r"'top_k' = 1.5.*an integer >= 0"),
    "temperature": (dict(temperature=float("nan")), r"'temperature' = nan.*>= 0"),
    "temperature type": (dict(temperature="hot"), r"'temperature' = 'hot'"),
    "seed": (dict(seed="42"), r"'seed' = '42'.*an integer or None"),
    "stop_token_ids": (dict(stop_token_ids=("2",)), r"'stop_token_ids' = \('2',\).*integer token ids"),
    "stop": (dict(stop=(5,)), r"'stop' = \(5,\).*Allowed: strings"),
    "stop_token_ids iterable": (dict(stop_token_ids=2.0), r"'stop_token_ids' = 2.0.*a sequence of token ids"),
}


@pytest.mark.parametrize("case", BAD_PARAMS)
def test_parameters_of_the_wrong_type_are_refused_by_name(case):
    kwargs, match = BAD_PARAMS[case]
    with pytest.raises(RequestError, match=match):
        RequestParams(**kwargs)


def test_token_ids_of_integer_types_are_accepted_and_the_engine_stays_healthy(engine, reference_model):
    import numpy as np

    running = engine.add_request(PROMPT, RequestParams(max_tokens=8, ignore_eos=True))
    engine.step()
    for prompt, _ in BAD_PROMPTS.values():
        with pytest.raises(RequestError):
            engine.add_request(prompt)
    expected = transformers_greedy(reference_model, PROMPT, 8)
    assert running.result().token_ids == expected
    params = RequestParams(max_tokens=8, ignore_eos=True, stop_token_ids=np.int64(VOCAB - 1))
    for prompt in (torch.tensor(PROMPT, dtype=torch.int32), np.array(PROMPT), list(torch.tensor(PROMPT))):
        assert engine.add_request(prompt, params).result().token_ids == expected
    assert engine.stats().free_slots == 2


@pytest.mark.parametrize("content", [b'{"eos_token_id": 2,', b'{"eos_token_id": "\xff"}', b'{"eos_token_id": "two"}'])
def test_a_broken_generation_config_is_named_when_the_engine_reads_its_eos(runtime, tmp_path, content):
    import shutil

    root = tmp_path / "artifact"
    shutil.copytree(runtime.root, root)
    (root / "generation_config.json").write_bytes(content)
    with pytest.raises(ValueError, match=rf"{root / 'generation_config.json'}: cannot read eos_token_id .*repair"):
        Engine.from_artifact(root, tokenizer=None)
