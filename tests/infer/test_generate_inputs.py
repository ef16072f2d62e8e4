"""generate() implements every transformers argument it accepts, and refuses the rest and bad inputs by name.

The logits rules (repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_new_tokens, ...) and the
sampling defaults are compared with transformers' own generate on the same weights, token for token.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from neuron_infer import NeuronModelForCausalLM
from neuron_infer.generation import generate
from neuron_infer.generation_args import GenerationDefaults, GenerationSettings

PROMPT = [1, 17, 33, 5, 90, 41, 7]
PROMPTS = [PROMPT, [1, 120, 3], [1, 9, 9, 14, 15, 26, 53, 58, 97, 93, 23]]
VOCAB = 160


@pytest.fixture(scope="module")
def loaded(tiny_artifact) -> NeuronModelForCausalLM:
    return NeuronModelForCausalLM.from_pretrained(tiny_artifact)


@pytest.fixture
def model(loaded) -> NeuronModelForCausalLM:
    # An argument the transformers-free defaults do not cover switches the model to transformers'
    # GenerationConfig for good; start every test on the transformers-free path, as a fresh load is.
    loaded.generation_config = None
    return loaded


@pytest.fixture(scope="module")
def on_device_model(tiny_checkpoint, tmp_path_factory) -> NeuronModelForCausalLM:
    from neuron_export.export import ExportOptions, export

    root = tmp_path_factory.mktemp("ods") / "tiny-ods"
    export(ExportOptions(model=str(tiny_checkpoint), output=str(root), batch_size=2, sequence_length=32,
                         max_context_length=16, context_buckets=[16], backend="torch-export",
                         on_device_sampling=True, max_topk=8), log=lambda _m: None)
    return NeuronModelForCausalLM.from_pretrained(root)


def ours(model, prompts: list[list[int]], seed: int = 0, **kwargs) -> list[list[int]]:
    ids, mask = left_padded(prompts)
    torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=mask, **kwargs)
    return out[:, ids.shape[1]:].tolist()


def theirs(ref_model, prompts: list[list[int]], seed: int = 0, **kwargs) -> list[list[int]]:
    ids, mask = left_padded(prompts)
    torch.manual_seed(seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ref_model.generate(ids, attention_mask=mask, pad_token_id=0, **kwargs)
    return out[:, ids.shape[1]:].tolist()


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


@pytest.fixture(scope="module")
def greedy(tiny_reference) -> list[int]:
    # This prompt's greedy continuation: [110, 2, 20, 141, ...]; 2 is the model's eos, so by default
    # generation stops after two tokens, which makes the minimum-length rules matter.
    return theirs(tiny_reference, [PROMPT], max_new_tokens=12, do_sample=False, eos_token_id=None)[0]


# ---- logits rules, greedy, against transformers -------------------------------------------------
RULES = {
    "repetition_penalty": lambda g: dict(repetition_penalty=1.5),
    "no_repeat_ngram_size": lambda g: dict(no_repeat_ngram_size=2),
    "bad_words_ids": lambda g: dict(bad_words_ids=[[g[0]], [g[3], g[4]]]),
    "suppress_tokens": lambda g: dict(suppress_tokens=[g[0], g[2]]),
    "begin_suppress_tokens": lambda g: dict(begin_suppress_tokens=[g[0]]),
    "min_new_tokens": lambda g: dict(min_new_tokens=8, eos_token_id=g[1]),
    "min_length": lambda g: dict(min_length=len(PROMPT) + 8, eos_token_id=g[1]),
    "several": lambda g: dict(repetition_penalty=1.3, no_repeat_ngram_size=3, bad_words_ids=[[g[2]]],
                              min_new_tokens=4, eos_token_id=g[1]),
}


@pytest.mark.parametrize("case", RULES)
def test_logits_rules_give_transformers_tokens(model, tiny_reference, greedy, case):
    kwargs = {"max_new_tokens": 12, "eos_token_id": None, **RULES[case](greedy)}
    plain = ours(model, [PROMPT], max_new_tokens=12, eos_token_id=kwargs["eos_token_id"])[0]
    got = ours(model, [PROMPT], **kwargs)[0]
    assert got == theirs(tiny_reference, [PROMPT], do_sample=False, **kwargs)[0]
    assert got != plain, f"{case} did not change greedy decoding here; pick values that matter"


def test_logits_rules_on_a_padded_batch_split_into_chunks(model, tiny_reference, greedy):
    # Three prompts on a batch-2 artifact: two chunks; transformers sees the same left-padded rows.
    kwargs = dict(max_new_tokens=10, repetition_penalty=1.4, no_repeat_ngram_size=2, min_new_tokens=5,
                  eos_token_id=greedy[1])
    got = ours(model, PROMPTS, **kwargs)
    assert got == theirs(tiny_reference, PROMPTS, do_sample=False, **kwargs)
    # Right padding gives the same tokens: the rules see the padding on the left, as transformers wants it.
    ids, mask = left_padded(PROMPTS)
    right, rmask = torch.zeros_like(ids), torch.zeros_like(mask)
    for i, p in enumerate(PROMPTS):
        right[i, : len(p)], rmask[i, : len(p)] = torch.tensor(p), 1
    assert model.generate(right, attention_mask=rmask, **kwargs)[:, ids.shape[1]:].tolist() == got


def test_rules_apply_before_sampling_like_transformers(model, tiny_reference):
    kwargs = dict(max_new_tokens=16, do_sample=True, temperature=1.5, eos_token_id=None)
    rules = dict(repetition_penalty=3.0, no_repeat_ngram_size=1)
    got = ours(model, [PROMPT], seed=3, **kwargs, **rules)[0]
    assert got == theirs(tiny_reference, [PROMPT], seed=3, **kwargs, **rules)[0]
    assert got != ours(model, [PROMPT], seed=3, **kwargs)[0]
    assert len(set(got)) == len(got), "no_repeat_ngram_size=1 forbids any repeated token"


# ---- sampling defaults and num_return_sequences ------------------------------------------------
def test_sampling_defaults_are_transformers_defaults(model, tiny_reference):
    # transformers samples from the top 50 tokens unless top_k is given; the same seed gives the same tokens.
    for seed in range(4):
        kwargs = dict(max_new_tokens=16, do_sample=True, temperature=2.0, eos_token_id=None)
        assert ours(model, [PROMPT], seed, **kwargs) == theirs(tiny_reference, [PROMPT], seed, **kwargs), seed


def test_default_length_is_twenty_new_tokens(model, tiny_reference):
    got = ours(model, [PROMPT], eos_token_id=None)
    assert got == theirs(tiny_reference, [PROMPT], do_sample=False, eos_token_id=None)
    assert len(got[0]) == 20


def test_num_return_sequences_expands_each_prompt_in_transformers_order(model, tiny_reference):
    kwargs = dict(max_new_tokens=8, do_sample=True, temperature=1.5, eos_token_id=None, num_return_sequences=3)
    ids, mask = left_padded(PROMPTS[:2])
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=mask, **kwargs)
    assert out.shape == (6, ids.shape[1] + 8)
    for row in range(6):
        assert torch.equal(out[row, : ids.shape[1]], ids[row // 3]), f"row {row} must continue prompt {row // 3}"
    assert len({tuple(r) for r in out[:3, ids.shape[1]:].tolist()}) > 1, "three samples, all the same"
    # One prompt, two sequences fill the compiled batch: the draws line up with transformers' exactly.
    two = dict(kwargs, num_return_sequences=2)
    assert ours(model, [PROMPT], 5, **two) == theirs(tiny_reference, [PROMPT], 5, **two)
    # Greedy decoding would return n copies of one sequence: transformers refuses it, and so does this.
    with pytest.raises(ValueError, match=r"num_return_sequences=3 needs do_sample=True"):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=4, num_return_sequences=3)


# ---- what is refused ----------------------------------------------------------------------------
def test_beam_search_is_refused_with_the_way_out(model):
    with pytest.raises(ValueError, match=r"num_beams=3 is not supported: beam search .* num_beams=1"):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=4, num_beams=3)


def refused_name(kwargs: dict) -> str:
    return next(k for k in kwargs if k not in ("do_sample", "top_k"))


@pytest.mark.parametrize("kwargs", [
    dict(penalty_alpha=0.6, top_k=4), dict(max_time=5.0), dict(guidance_scale=2.0), dict(num_beam_groups=2),
    dict(watermarking_config={"bias": 2.0}),
    dict(output_hidden_states=True, return_dict_in_generate=True),
], ids=refused_name)
def test_unimplemented_arguments_are_refused_by_name(model, kwargs):
    name = refused_name(kwargs)
    with pytest.raises(ValueError, match=rf"{name}=.* is not supported: "):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=4, **kwargs)


def test_unimplemented_field_in_generation_config_json_is_refused_and_can_be_overridden(tiny_artifact, tmp_path):
    root = Path(shutil.copytree(tiny_artifact, tmp_path / "a"))
    path = root / "generation_config.json"
    path.write_text(path.read_text().replace('"eos_token_id": 2', '"eos_token_id": 2, "guidance_scale": 2.0'))
    model = NeuronModelForCausalLM.from_pretrained(root)
    with pytest.raises(ValueError, match=r"generation config sets guidance_scale=2.0 .* pass guidance_scale=1.0"):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=4)
    assert model.generate(torch.tensor([PROMPT]), max_new_tokens=4, guidance_scale=1.0).shape[1] >= len(PROMPT)


@pytest.mark.parametrize("kwargs", [
    dict(repetition_penalty=1.3), dict(no_repeat_ngram_size=2), dict(bad_words_ids=[[5]]), dict(min_new_tokens=3),
])
def test_on_device_sampling_refuses_rules_that_need_logits(on_device_model, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"{name}=.* needs the logits on the host.*without --on-device-sampling"):
        on_device_model.generate(torch.tensor([PROMPT]), max_new_tokens=4, **kwargs)


def test_on_device_sampling_refuses_top_k_beyond_max_topk_and_expands_sequences(on_device_model):
    with pytest.raises(ValueError, match=r"top_k=9 exceeds max_topk=8"):
        on_device_model.generate(torch.tensor([PROMPT]), max_new_tokens=4, do_sample=True, top_k=9)
    out = on_device_model.generate(torch.tensor([PROMPT]), max_new_tokens=4, do_sample=True, top_k=8,
                                   num_return_sequences=3, eos_token_id=None)
    assert out.shape == (3, len(PROMPT) + 4)


def test_on_device_sampling_artifacts_check_the_vocabulary_too(on_device_model):
    # Their graphs return tokens, not logits; the vocabulary comes from the graphs' signature.
    with pytest.raises(ValueError, match=r"input_ids\[0, 1\] = 160 is not a token of this model .*\[0, 160\)"):
        on_device_model.generate(torch.tensor([[1, VOCAB, 3]]), max_new_tokens=2)


# ---- lengths ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [-1, 0])
def test_max_new_tokens_below_one_is_refused(model, n):
    with pytest.raises(ValueError, match=rf"max_new_tokens={n} must be at least 1"):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=n)
    assert model.generation_config is not None  # built now: generate goes through transformers' GenerationConfig
    with pytest.raises(ValueError, match=rf"max_new_tokens\W.*{n}"):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=n)


def test_max_length_not_above_the_prompt_is_refused(model):
    with pytest.raises(ValueError, match=r"max_length=5 leaves no room after the 7 tokens of input_ids"):
        model.generate(torch.tensor([PROMPT]), max_length=5)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(max_new_tokens="ten"), r"'max_new_tokens' = 'ten' is not an integer"),
    (dict(max_new_tokens=2.5), r"'max_new_tokens' = 2.5 is not an integer"),
    (dict(do_sample="yes"), r"'do_sample' = 'yes' is not true or false"),
    (dict(bad_words_ids=[5]), r"'bad_words_ids' = \[5\] is not a list of lists"),
])
def test_arguments_of_the_wrong_type_are_refused_by_name(model, kwargs, match):
    with pytest.raises(TypeError, match=match):
        model.generate(torch.tensor([PROMPT]), **kwargs)


def test_rule_token_ids_outside_the_vocabulary_are_refused(model):
    with pytest.raises(ValueError, match=r"suppress_tokens names token 999, which is not in .* \[0, 160\)"):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=2, suppress_tokens=[3, 999])


def test_nan_temperature_is_refused(model):
    with pytest.raises(ValueError, match=r"temperature=nan must be > 0"):
        model.generate(torch.tensor([PROMPT]), max_new_tokens=2, do_sample=True, temperature=float("nan"))


# ---- input_ids and attention_mask ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_non_integer_input_ids_are_refused(model, dtype):
    with pytest.raises(TypeError, match=rf"input_ids has dtype {dtype}; token ids are integers"):
        model.generate(torch.tensor([PROMPT]).to(dtype), max_new_tokens=2)


@pytest.mark.parametrize(("ids", "match"), [
    (torch.zeros(0, 4, dtype=torch.long), r"shape \(0, 4\): no prompts"),
    (torch.zeros(2, 0, dtype=torch.long), r"shape \(2, 0\): the prompts are empty"),
    (torch.ones(1, 2, 4, dtype=torch.long), r"shape \(1, 2, 4\); pass \(batch, length\)"),
])
def test_input_shapes_without_prompts_are_refused(model, ids, match):
    with pytest.raises(ValueError, match=match):
        model.generate(ids, max_new_tokens=2)


@pytest.mark.parametrize("mask_shape", [(2, 7), (1, 5)])
def test_attention_mask_of_another_shape_is_refused(model, mask_shape):
    with pytest.raises(ValueError, match=rf"attention_mask has shape \({mask_shape[0]}, {mask_shape[1]}\) but "
                                         r"input_ids has shape \(1, 7\)"):
        model.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(mask_shape, dtype=torch.long),
                       max_new_tokens=2)


@pytest.mark.parametrize("bad", [VOCAB, 10**9, -1])
def test_token_ids_outside_the_vocabulary_are_refused_with_their_place(model, bad):
    # The padding at [1, 0] is outside the vocabulary too, but it is never fed to the model: not reported.
    ids = torch.tensor([[1, 5, 6, 7], [-5, 1, bad, 9]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    with pytest.raises(ValueError, match=rf"input_ids\[1, 2\] = {bad} is not a token of this model \(its "
                                         r"vocabulary is \[0, 160\)\)"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2)


def test_a_list_is_refused_by_the_generate_function(loaded):
    settings = GenerationSettings.resolve(GenerationDefaults(), {"max_new_tokens": 2}, len(PROMPT))
    with pytest.raises(TypeError, match=r"input_ids is a list, not a torch.Tensor.*torch.tensor\(ids\)"):
        generate(loaded.runtime, [PROMPT], None, settings)


def test_a_list_is_refused_by_the_model(model):
    with pytest.raises(TypeError, match=r"input_ids is a list, not a torch.Tensor"):
        model.generate([PROMPT], max_new_tokens=2)


# ---- generation_config.json ---------------------------------------------------------------------
BROKEN = {
    "invalid JSON": (b'{"eos_token_id": 2,', r"invalid JSON \(Expecting property name"),
    "not UTF-8": (b'{"eos_token_id": "\xff"}', r"not UTF-8 text \(byte 0xff at offset 18\)"),
    "not an object": (b"[1, 2]", r"the top level is a JSON list, not an object"),
    "wrong field type": (b'{"max_new_tokens": "ten"}', r"field 'max_new_tokens' = 'ten' is not an integer"),
    "wrong eos type": (b'{"eos_token_id": [2, "x"]}', r"field 'eos_token_id' = \[2, 'x'\] is not an integer or"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_generation_config_json_names_the_file_and_the_fix(tmp_path, case):
    data, problem = BROKEN[case]
    (tmp_path / "generation_config.json").write_bytes(data)
    with pytest.raises(ValueError, match=rf"generation_config\.json: {problem}.*; repair the file, or delete it"):
        GenerationDefaults.from_dir(tmp_path)


def test_an_artifact_with_a_broken_generation_config_json_does_not_load(tiny_artifact, tmp_path):
    root = Path(shutil.copytree(tiny_artifact, tmp_path / "a"))
    (root / "generation_config.json").write_bytes(b'{"eos_token_id": 2,')
    with pytest.raises(ValueError, match=rf"{root / 'generation_config.json'}: invalid JSON .*; repair the file"):
        NeuronModelForCausalLM.from_pretrained(root)
