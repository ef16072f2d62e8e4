"""NeuronModelForCausalLM.generate against transformers' eager generate on the same weights."""

from __future__ import annotations

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from neuron_infer import NeuronModelForCausalLM

PROMPTS = [[1, 17, 33, 5, 90, 41, 7], [1, 120, 3], [1, 9, 9, 14, 15, 26, 53, 58, 97, 93, 23]]


@pytest.fixture(scope="module")
def model(tiny_artifact) -> NeuronModelForCausalLM:
    return NeuronModelForCausalLM.from_pretrained(tiny_artifact)


def reference(ref_model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = ref_model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
    return out[0, len(prompt):].tolist()


def padded(prompts: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        sl = slice(width - len(p), width) if side == "left" else slice(0, len(p))
        ids[i, sl] = torch.tensor(p)
        mask[i, sl] = 1
    return ids, mask


def test_greedy_matches_transformers(model, tiny_reference):
    for prompt in PROMPTS:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=20, eos_token_id=None)
        assert out[0, : len(prompt)].tolist() == prompt
        assert out[0, len(prompt):].tolist() == reference(tiny_reference, prompt, 20)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_larger_than_compiled_is_split_and_matches(model, tiny_reference, side):
    # 3 prompts on a batch-2 artifact: two chunks, the second with an idle slot.
    ids, mask = padded(PROMPTS, side)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=None)
    assert out.shape == (3, ids.shape[1] + 12)
    for i, prompt in enumerate(PROMPTS):
        assert out[i, ids.shape[1]:].tolist() == reference(tiny_reference, prompt, 12), f"row {i}"


def test_left_and_right_padding_give_the_same_tokens(model):
    left, lmask = padded(PROMPTS, "left")
    right, rmask = padded(PROMPTS, "right")
    width = left.shape[1]
    a = model.generate(left, attention_mask=lmask, max_new_tokens=10, eos_token_id=None)
    b = model.generate(right, attention_mask=rmask, max_new_tokens=10, eos_token_id=None)
    assert torch.equal(a[:, width:], b[:, width:])


def test_overlong_prompt_names_both_sizes(model):
    with pytest.raises(ValueError, match=r"48 tokens.*at most 47 \(sequence_length - 1"):
        model.generate(torch.ones(1, 48, dtype=torch.long), max_new_tokens=2)


LONG = [1, *[(7 * i * i + 3 * i + 11) % 150 + 3 for i in range(39)]]  # 40 tokens: over the largest bucket (32)


@pytest.mark.parametrize("side", ["left", "right"])
def test_prompt_longer_than_the_largest_bucket_is_chunked(model, tiny_reference, side):
    """Through the chunked-prefill graphs (chunks of 8 and 32 at offsets), beside a short prompt in the same batch."""
    ids, mask = padded([LONG, PROMPTS[1]], side)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None)
    assert out[0, ids.shape[1]:].tolist() == reference(tiny_reference, LONG, 8)
    assert out[1, ids.shape[1]:].tolist() == reference(tiny_reference, PROMPTS[1], 8)


def test_empty_prompt_is_rejected(model):
    with pytest.raises(ValueError, match="empty"):
        model.generate(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.zeros(1, 4, dtype=torch.long))


def test_eos_stops_rows_and_pads(model, tiny_reference):
    prompt = PROMPTS[0]
    greedy = reference(tiny_reference, prompt, 12)
    stop_a, stop_b = greedy[3], greedy[6]
    out = model.generate(torch.tensor([prompt]), max_new_tokens=12, eos_token_id=[stop_b, stop_a], pad_token_id=0)
    new = out[0, len(prompt):].tolist()
    first = min(greedy.index(stop_a), greedy.index(stop_b))
    assert first < 11
    assert new == greedy[: first + 1], "generation must stop at the first of several eos ids"


def test_stopping_criteria_are_honoured(model):
    class StopAfter(StoppingCriteria):
        def __init__(self, length: int):
            self.length = length

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)

    prompt = torch.tensor([PROMPTS[0]])
    out = model.generate(prompt, max_new_tokens=20, eos_token_id=None,
                         stopping_criteria=StoppingCriteriaList([StopAfter(len(PROMPTS[0]) + 5)]))
    assert out.shape[1] == len(PROMPTS[0]) + 5


def test_streamer_receives_prompt_then_each_token(model):
    class Recorder:
        def __init__(self):
            self.calls: list[list[int]] = []
            self.ended = False

        def put(self, value):
            self.calls.append(value.reshape(-1).tolist())

        def end(self):
            self.ended = True

    rec = Recorder()
    prompt = torch.tensor([PROMPTS[1]])
    out = model.generate(prompt, max_new_tokens=6, eos_token_id=None, streamer=rec)
    assert rec.calls[0] == PROMPTS[1]
    assert [c[0] for c in rec.calls[1:]] == out[0, len(PROMPTS[1]):].tolist()
    assert rec.ended


def test_sampling_is_reproducible_under_a_seed(model):
    prompt = torch.tensor([PROMPTS[0]])
    kwargs = dict(max_new_tokens=16, do_sample=True, temperature=1.3, top_k=50, top_p=0.95, eos_token_id=None)
    torch.manual_seed(1234)
    a = model.generate(prompt, **kwargs)
    torch.manual_seed(1234)
    b = model.generate(prompt, **kwargs)
    c = model.generate(prompt, generator=torch.Generator().manual_seed(99), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c), "a different seed should change a 16-token sample at temperature 1.3"


def test_generation_config_defaults_come_from_the_artifact(model):
    assert model.generation_config.eos_token_id == 2
    assert model.config.model_type == "llama"


def test_unknown_generate_argument_is_an_error(model):
    with pytest.raises(TypeError, match="num_beams_typo"):
        model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=2, num_beams_typo=3)


RESOLVE_CASES = [
    {},
    {"max_new_tokens": 7},
    {"max_length": 30},
    {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9},
    {"do_sample": True},
    {"eos_token_id": [2, 5], "pad_token_id": 0},
    {"eos_token_id": None},
]


@pytest.mark.parametrize("kwargs", RESOLVE_CASES, ids=lambda k: ",".join(k) or "defaults")
def test_transformers_free_defaults_resolve_like_generation_config(tiny_artifact, kwargs):
    # generate() reads generation_config.json itself unless asked for more (it keeps transformers off the
    # load-to-first-token path); it must settle every argument exactly as transformers' GenerationConfig does.
    from transformers import GenerationConfig

    from neuron_infer.generation_args import GenerationDefaults, GenerationSettings

    assert GenerationDefaults.covers(kwargs)
    fast = GenerationSettings.resolve(GenerationDefaults.from_dir(tiny_artifact), dict(kwargs), prompt_len=5)
    full = GenerationSettings.resolve(GenerationConfig.from_pretrained(tiny_artifact), dict(kwargs), prompt_len=5)
    assert fast == full


def test_arguments_beyond_the_defaults_go_through_generation_config(tiny_artifact):
    from neuron_infer.generation_args import GenerationDefaults

    fresh = NeuronModelForCausalLM.from_pretrained(tiny_artifact)
    assert not GenerationDefaults.covers({"num_beams": 1})
    out = fresh.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=3, num_beams=1, eos_token_id=None)
    assert out.shape == (1, len(PROMPTS[0]) + 3)
    assert fresh._generation_config is not None, "num_beams is only known to transformers' GenerationConfig"
