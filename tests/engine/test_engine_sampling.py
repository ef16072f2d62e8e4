"""RequestParams' logits rules (penalties, min_p, min_tokens, logit_bias, bad words, allowed tokens) in the Engine,
against transformers' generate or transformers' logits and processors on the same weights."""

from __future__ import annotations

import warnings

import pytest
import torch
from support.tiny import export_tiny, transformers_greedy
from transformers.generation import logits_process as lp

from neuron_cache import Artifact
from neuron_infer import DecoderRuntime
from neuron_infer.engine import Engine, RequestError, RequestParams, TokenSampler
from neuron_infer.sampling import SamplingParams

PROMPT = [1, 17, 33, 5, 90, 41, 7]
OTHER = [1, 9, 9, 14, 15, 26, 53, 58, 97, 93, 23]
N = 12


def theirs(model, prompt: list[int], **kwargs) -> list[int]:
    """transformers' greedy generate, eos ignored unless given."""
    kwargs = {"max_new_tokens": N, "do_sample": False, "eos_token_id": None, "pad_token_id": 0, **kwargs}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(torch.tensor([prompt]), **kwargs)
    return out[0, len(prompt):].tolist()


def ours(engine, prompt: list[int], **fields) -> list[int]:
    return engine.add_request(prompt, RequestParams(**{"max_tokens": N, "ignore_eos": True, **fields})).result().token_ids


@pytest.fixture(scope="module")
def greedy(reference_model) -> list[int]:
    return transformers_greedy(reference_model, PROMPT, N)


# ---- greedy, against transformers' generate -------------------------------------------------------
# The random model's greedy text does not repeat itself within N tokens, so the penalties that change it here are
# the ones below 1 (or below 0 for OpenAI's): they pull the prompt's or the generated tokens back.
CASES = {
    "repetition_penalty": lambda g, v: (dict(repetition_penalty=0.4), dict(repetition_penalty=0.4)),
    "logit_bias": lambda g, v: (dict(logit_bias={g[0]: -50.0, g[2]: 3.0}),
                                dict(sequence_bias={(g[0],): -50.0, (g[2],): 3.0})),
    "bad_words_ids": lambda g, v: (dict(bad_words_ids=[[g[1]], [g[2], g[3]]]), dict(bad_words_ids=[[g[1]], [g[2], g[3]]])),
    "allowed_token_ids": lambda g, v: (dict(allowed_token_ids=list(range(0, 400, 3))),
                                       dict(suppress_tokens=sorted(set(range(v)) - set(range(0, 400, 3))))),
}


@pytest.mark.parametrize("case", CASES)
def test_rules_give_transformers_greedy_tokens(engine, reference_model, greedy, case):
    fields, kwargs = CASES[case](greedy, reference_model.config.vocab_size)
    got = ours(engine, PROMPT, **fields)
    assert got == theirs(reference_model, PROMPT, **kwargs)
    assert got != greedy, f"{case} did not change greedy decoding; pick values that do"


def test_min_tokens_holds_back_the_stop_token_like_min_new_tokens(engine, reference_model, greedy):
    stop = greedy[1]
    got = ours(engine, PROMPT, min_tokens=6, stop_token_ids=(stop,))
    want = theirs(reference_model, PROMPT, min_new_tokens=6, eos_token_id=stop)
    assert got == want[: want.index(stop) + 1] if stop in want else got == want
    assert len(got) > 2, "without min_tokens the request would stop at its second token"


def test_requests_with_different_rules_side_by_side(engine, reference_model):
    # Each request's sampler holds its own history: the rules never see the other slot's tokens.
    a = engine.add_request(PROMPT, RequestParams(max_tokens=N, ignore_eos=True, repetition_penalty=0.4))
    b = engine.add_request(OTHER, RequestParams(max_tokens=N, ignore_eos=True, bad_words_ids=[[OTHER[2]]],
                                                repetition_penalty=1.3))
    assert a.result().token_ids == theirs(reference_model, PROMPT, repetition_penalty=0.4)
    assert b.result().token_ids == theirs(reference_model, OTHER, bad_words_ids=[[OTHER[2]]], repetition_penalty=1.3)


def openai_replay(model, prompt: list[int], presence: float, frequency: float) -> list[int]:
    """Greedy over transformers' logits with OpenAI's penalties written out: counts of the generated tokens only."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(N):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            counts = torch.bincount(torch.tensor(ids[len(prompt):], dtype=torch.long), minlength=logits.numel())
            ids.append(int((logits - frequency * counts - presence * (counts > 0).float()).argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize(("presence", "frequency"), [(-2.0, 0.0), (0.0, -1.0), (-1.5, 0.5), (1.0, -1.5)])
def test_presence_and_frequency_penalties_have_openai_semantics(engine, reference_model, greedy, presence, frequency):
    got = ours(engine, PROMPT, presence_penalty=presence, frequency_penalty=frequency)
    assert got == openai_replay(reference_model, PROMPT, presence, frequency)
    assert got != greedy, "the penalties did not change greedy decoding; pick values that do"


def test_the_prompt_is_not_penalised_by_presence(engine, reference_model):
    # A token of the prompt is as likely as before until it is generated (unlike repetition_penalty).
    assert openai_replay(reference_model, PROMPT, 1.5, 0.0)[0] == transformers_greedy(reference_model, PROMPT, 1)[0]
    assert ours(engine, PROMPT, presence_penalty=1.5, max_tokens=1) == transformers_greedy(reference_model, PROMPT, 1)


# ---- sampled, seeded --------------------------------------------------------------------------------
def test_min_p_sampling_follows_transformers_with_the_request_generator(engine, reference_model):
    params = RequestParams(max_tokens=N, temperature=1.0, min_p=0.5, seed=7, ignore_eos=True)
    generator = torch.Generator().manual_seed(7)
    processors = lp.LogitsProcessorList([lp.MinPLogitsWarper(min_p=0.5)])
    ids = list(PROMPT)
    with torch.no_grad():
        for _ in range(N):
            scores = processors(torch.tensor([ids]), reference_model(torch.tensor([ids])).logits[:, -1].float())
            ids.append(int(torch.multinomial(scores.softmax(-1), 1, generator=generator)))
    got = engine.add_request(PROMPT, params).result().token_ids
    assert got == ids[len(PROMPT):]
    plain = engine.add_request(PROMPT, RequestParams(max_tokens=N, temperature=1.0, seed=7, ignore_eos=True))
    assert got != plain.result().token_ids, "min_p=0.5 did not change this sample"


def test_greedy_ignores_min_p_and_keeps_the_fast_path(engine, reference_model, greedy):
    params = RequestParams(max_tokens=N, min_p=0.9, ignore_eos=True)
    assert params.sampler(PROMPT, {2}, 49152).processors is None
    assert engine.add_request(PROMPT, params).result().token_ids == greedy


def test_a_sampler_with_processors_keeps_its_history():
    penalty = lp.LogitsProcessorList([lp.RepetitionPenaltyLogitsProcessor(1e6)])
    sampler = TokenSampler(SamplingParams(), processors=penalty, prompt=[3])
    logits = torch.tensor([-1.0, -1.0, -1.0, -0.1, -0.2, -0.3])  # a penalised token drops below -1
    assert [sampler.pick(logits) for _ in range(3)] == [4, 5, 0]  # the penalty follows every picked token
    assert sampler.history.tolist() == [[3, 4, 5, 0]]


# ---- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "match"), [
    (dict(repetition_penalty=0.0), r"'repetition_penalty' = 0.0.*> 0"),
    (dict(presence_penalty=2.5), r"'presence_penalty' = 2.5.*-2 <= value <= 2"),
    (dict(frequency_penalty=float("nan")), r"'frequency_penalty' = nan"),
    (dict(min_p=1.5), r"'min_p' = 1.5"),
    (dict(min_tokens=20, max_tokens=10), r"'min_tokens' = 20.*max_tokens=10"),
    (dict(logit_bias={5: float("inf")}), r"'logit_bias' = .*finite bias"),
    (dict(logit_bias=[5, 1.0]), r"'logit_bias' = .*a dict"),
    (dict(bad_words_ids=[[]]), r"'bad_words_ids' = .*non-empty"),
    (dict(bad_words_ids=[5]), r"'bad_words_ids' = .*non-empty sequences"),
    (dict(allowed_token_ids=[]), r"'allowed_token_ids' = \[\].*non-empty"),
])
def test_bad_rule_values_are_refused_by_field(fields, match):
    with pytest.raises(RequestError, match=match):
        RequestParams(**fields)


@pytest.mark.parametrize("fields", [dict(logit_bias={10**6: 1.0}), dict(bad_words_ids=[[5, 49152]]),
                                    dict(allowed_token_ids=[1, -3])], ids=lambda f: next(iter(f)))
def test_rule_token_ids_outside_the_vocabulary_are_refused(engine, fields):
    with pytest.raises(RequestError, match=rf"'{next(iter(fields))}' = .*token ids in \[0, 49152\)"):
        engine.add_request(PROMPT, RequestParams(**fields))
    assert engine.stats().free_slots == 2


@pytest.fixture(scope="module")
def on_device_engine(tiny_checkpoint, tmp_path_factory) -> Engine:
    art = export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("ods") / "tiny-ods-rules", on_device_sampling=True,
                      batch_size=1, context_buckets=[16], max_context_length=16, sequence_length=32, decode_batches=[])
    with Engine(DecoderRuntime(Artifact.open(art))) as engine:
        yield engine


@pytest.mark.parametrize("fields", [
    dict(repetition_penalty=1.2), dict(presence_penalty=0.5), dict(frequency_penalty=0.5),
    dict(temperature=1.0, min_p=0.1), dict(min_tokens=2), dict(logit_bias={5: 1.0}), dict(bad_words_ids=[[5]]),
    dict(allowed_token_ids=[5, 6]),
], ids=lambda f: next(n for n in f if n != "temperature"))
def test_on_device_sampling_refuses_host_rules_by_name(on_device_engine, reference_model, fields):
    name = next(n for n in fields if n != "temperature")
    with pytest.raises(RequestError, match=rf"'{name}' = .*only temperature, top_k and top_p.*re-export the "
                                           r"artifact without --on-device-sampling"):
        on_device_engine.add_request(PROMPT, RequestParams(**fields))
    # What the graphs do themselves still runs.
    done = on_device_engine.add_request(PROMPT, RequestParams(max_tokens=4, ignore_eos=True)).result()
    assert done.token_ids == transformers_greedy(reference_model, PROMPT, 4)
