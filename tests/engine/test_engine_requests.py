"""Per-request behaviour: seeded sampling, stop strings and tokens, bad requests, the loop thread."""

from __future__ import annotations

import threading

import pytest
import torch
from support.tiny import transformers_greedy

from neuron_infer.engine import Engine, EngineClosedError, FinishReason, RequestError, RequestParams
from neuron_infer.sampling import SamplingParams, select

PROMPT = [1, 17, 33, 5, 90, 41, 7]
OTHER = [1, 9, 9, 14, 15, 26, 53, 58, 97, 93, 23]


def sampled(temperature=0.9, top_k=50, top_p=0.95, seed=1234, n=12) -> RequestParams:
    return RequestParams(max_tokens=n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, ignore_eos=True)


def transformers_replay(model, prompt: list[int], params: RequestParams) -> list[int]:
    """The tokens a seeded request must produce: transformers' logits, the request's own generator."""
    generator = torch.Generator().manual_seed(params.seed)
    sp = SamplingParams(do_sample=True, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(params.max_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1:]
            ids.append(int(select(logits.float(), sp, generator)[0]))
    return ids[len(prompt):]


# ---- sampling -----------------------------------------------------------------------------------
def test_a_seeded_request_follows_transformers_logits_with_its_own_generator(engine, reference_model):
    params = sampled()
    got = engine.add_request(PROMPT, params).result().token_ids
    assert got == transformers_replay(reference_model, PROMPT, params)
    assert got != transformers_greedy(reference_model, PROMPT, params.max_tokens), "sampling looked greedy"


def test_seeds_reproduce_whatever_runs_beside_them(engine):
    alone = engine.add_request(PROMPT, sampled(seed=7)).result().token_ids
    # Now beside another seeded request and an unseeded one that consume random numbers each step.
    neighbour = engine.add_request(OTHER, sampled(seed=99, n=20))
    again = engine.add_request(PROMPT, sampled(seed=7))
    unseeded = engine.add_request(OTHER, sampled(seed=None))
    assert again.result().token_ids == alone
    other_seed = engine.add_request(PROMPT, sampled(seed=8)).result().token_ids
    assert other_seed != alone
    neighbour.result(), unseeded.result()


def test_temperature_zero_is_greedy_whatever_the_other_fields(engine, reference_model):
    params = RequestParams(max_tokens=8, temperature=0.0, top_k=3, top_p=0.5, seed=1, ignore_eos=True)
    assert engine.add_request(PROMPT, params).result().token_ids == transformers_greedy(reference_model, PROMPT, 8)


# ---- stopping -----------------------------------------------------------------------------------
def test_stop_string_cuts_text_and_streams_nothing_past_it(engine, reference_model, tokenizer):
    full_ids = transformers_greedy(reference_model, PROMPT, 24)
    full_text = tokenizer.decode(full_ids, skip_special_tokens=True)
    stop = full_text[len(full_text) // 2 : len(full_text) // 2 + 3]
    assert stop.strip(), f"picked a blank stop string from {full_text!r}; choose another prompt"
    expected = full_text[: full_text.index(stop)]
    handle = engine.add_request(PROMPT, RequestParams(max_tokens=24, stop=(stop,), ignore_eos=True))
    streamed = [o.text for o in handle]
    done = handle.result()
    assert done.finish_reason == FinishReason.STOP
    assert done.text == expected == "".join(streamed)
    assert done.token_ids == full_ids[: len(done.token_ids)] and len(done.token_ids) < 24


def test_stop_token_and_eos_end_a_request(engine, reference_model, tokenizer):
    greedy = transformers_greedy(reference_model, PROMPT, 10)
    stop_tok = greedy[4]
    first = greedy.index(stop_tok)
    done = engine.add_request(PROMPT, RequestParams(max_tokens=10, stop_token_ids=(stop_tok,))).result()
    assert done.finish_reason == FinishReason.STOP and done.token_ids == greedy[: first + 1]
    # EOS comes from the artifact's generation_config.json unless ignore_eos is set.
    assert tokenizer.eos_token_id in engine.eos_token_ids
    engine.eos_token_ids = (stop_tok,)
    eos_done = engine.add_request(PROMPT, RequestParams(max_tokens=10)).result()
    ignored = engine.add_request(PROMPT, RequestParams(max_tokens=10, ignore_eos=True)).result()
    assert eos_done.token_ids == greedy[: first + 1] and eos_done.finish_reason == FinishReason.STOP
    assert ignored.token_ids == greedy and ignored.finish_reason == FinishReason.LENGTH


# ---- bad requests -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "params", "match"),
    [
        ([], RequestParams(), r"'prompt' = \[\].*at least one token"),
        ([1] * 64, RequestParams(), r"64 tokens.*at most 63 tokens.*sequence_length - 1"),
        ([1, 10**6], RequestParams(), r"token ids in \[0, 49152\)"),
        (PROMPT, dict(temperature=-1.0), r"'temperature' = -1.0.*>= 0"),
        (PROMPT, dict(top_p=0.0), r"'top_p' = 0.0"),
        (PROMPT, dict(max_tokens=0), r"'max_tokens' = 0"),
    ],
)
def test_a_bad_request_is_refused_clearly_and_the_engine_stays_healthy(engine, reference_model, prompt, params, match):
    running = engine.add_request(OTHER, RequestParams(max_tokens=12, ignore_eos=True))
    engine.step()
    with pytest.raises(RequestError, match=match):
        engine.add_request(prompt, params if isinstance(params, RequestParams) else RequestParams(**params))
    assert running.result().token_ids == transformers_greedy(reference_model, OTHER, 12)
    assert engine.stats().free_slots == 2


def test_text_features_without_a_tokenizer_are_refused(runtime):
    with Engine(runtime, tokenizer=None) as engine:
        with pytest.raises(RequestError, match="stop strings only with a tokenizer"):
            engine.add_request(PROMPT, RequestParams(stop=("x",)))
        with pytest.raises(RequestError, match="no tokenizer"):
            engine.add_request("hello")
        with pytest.raises(RequestError, match="request_id"):
            engine.add_request(PROMPT, request_id="a")
            engine.add_request(PROMPT, request_id="a")


def test_a_string_prompt_is_tokenized(engine, reference_model, tokenizer):
    ids = tokenizer("The capital of France")["input_ids"]
    done = engine.add_request("The capital of France", RequestParams(max_tokens=5, ignore_eos=True)).result()
    assert done.prompt_token_ids == ids
    assert done.token_ids == transformers_greedy(reference_model, ids, 5)


# ---- the loop thread ----------------------------------------------------------------------------
def test_the_loop_thread_serves_many_submitting_threads(runtime, tokenizer, reference_model):
    prompts = [PROMPT, OTHER, [1, 500, 8000, 44], [1, 2000, 3], [1, 77, 78, 79, 80]]
    results: dict[int, list[int]] = {}
    streamed: dict[int, list[int]] = {i: [] for i in range(len(prompts))}

    def client(i: int) -> None:
        def on_output(out):
            streamed[i].extend(out.token_ids)

        handle = engine.add_request(prompts[i], RequestParams(max_tokens=6 + i, ignore_eos=True), on_output=on_output)
        results[i] = handle.result(timeout=120).token_ids

    engine = Engine(runtime, tokenizer).start()
    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        with pytest.raises(RuntimeError, match="loop thread owns step"):
            engine.step()
        stuck = engine.add_request(OTHER, RequestParams(max_tokens=60, ignore_eos=True))
    finally:
        engine.shutdown()
    for i, p in enumerate(prompts):
        assert results[i] == transformers_greedy(reference_model, p, 6 + i), f"client {i}"
        assert streamed[i] == results[i]
    assert stuck.result(timeout=10).finish_reason in (FinishReason.CANCELLED, FinishReason.LENGTH)
    assert engine.stats().free_slots == 2 and not engine.loop_running
    with pytest.raises(EngineClosedError):
        engine.add_request(PROMPT)


def test_a_raising_callback_cancels_only_its_request(engine, reference_model):
    def boom(_out):
        raise RuntimeError("client went away")

    bad = engine.add_request(PROMPT, RequestParams(max_tokens=30, ignore_eos=True), on_output=boom)
    good = engine.add_request(OTHER, RequestParams(max_tokens=8, ignore_eos=True))
    assert good.result().token_ids == transformers_greedy(reference_model, OTHER, 8)
    assert bad.result().finish_reason == FinishReason.CANCELLED
