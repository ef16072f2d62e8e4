"""Continuous batching: greedy tokens equal NeuronModelForCausalLM.generate and transformers while
requests join and leave a batch-2 artifact at different steps; cancelling frees the slot; queueing."""

from __future__ import annotations

import pytest
import torch
from support.tiny import transformers_greedy

from neuron_infer.engine import Engine, EngineConfig, FinishReason, QueueFullError, RequestParams

# Different lengths (so different context buckets) and different max_tokens (so they leave at different steps).
PROMPTS = [[1, 17, 33, 5, 90, 41, 7], [1, 120, 3], [1, 9, 9, 14, 15, 26, 53, 58, 97, 93, 23], [1, 500, 8000, 44],
           [1, *range(300, 320)]]
MAX_TOKENS = [9, 14, 6, 11, 8]


def neuron_greedy(neuron_model, prompt: list[int], n: int) -> list[int]:
    out = neuron_model.generate(torch.tensor([prompt]), max_new_tokens=n, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def greedy(n: int) -> RequestParams:
    return RequestParams(max_tokens=n, ignore_eos=True)


def test_requests_joining_and_leaving_mid_batch_match_both_references(engine, neuron_model, reference_model):
    handles, seen_queue_while_full = {}, False
    handles[0] = engine.add_request(PROMPTS[0], greedy(MAX_TOKENS[0]))
    engine.step()
    handles[1] = engine.add_request(PROMPTS[1], greedy(MAX_TOKENS[1]))  # joins a running batch
    for _ in range(2):
        engine.step()
    for i in (2, 3):  # both queue: the two slots are busy
        handles[i] = engine.add_request(PROMPTS[i], greedy(MAX_TOKENS[i]))
    step = 0
    while engine.has_work:
        stats = engine.stats()
        seen_queue_while_full |= stats.free_slots == 0 and stats.waiting > 0
        engine.step()
        step += 1
        if step == 3:
            handles[4] = engine.add_request(PROMPTS[4], greedy(MAX_TOKENS[4]))
    assert seen_queue_while_full, "no step had a full batch with requests waiting: the test lost its point"
    assert engine.stats().free_slots == 2
    for i, prompt in enumerate(PROMPTS):
        got = handles[i].result()
        assert got.finish_reason == FinishReason.LENGTH
        want = transformers_greedy(reference_model, prompt, MAX_TOKENS[i])
        assert got.token_ids == want, f"request {i} differs from transformers"
        assert got.token_ids == neuron_greedy(neuron_model, prompt, MAX_TOKENS[i]), f"request {i} vs generate()"


def test_streamed_outputs_add_up_to_the_completion(engine, tokenizer):
    handle = engine.add_request(PROMPTS[2], greedy(7))
    outs = list(handle)  # drives step() itself: no loop thread here
    assert [len(o.token_ids) for o in outs] == [1] * 7
    assert [o.finished for o in outs] == [False] * 6 + [True]
    tokens = [t for o in outs for t in o.token_ids]
    assert tokens == handle.result().token_ids
    assert "".join(o.text for o in outs) == tokenizer.decode(tokens, skip_special_tokens=True)


def test_cancelling_frees_the_slot_for_a_waiting_request(engine, reference_model):
    a = engine.add_request(PROMPTS[0], greedy(40))
    b = engine.add_request(PROMPTS[1], greedy(40))
    c = engine.add_request(PROMPTS[3], greedy(10))
    engine.step()
    engine.step()
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.free_slots) == (2, 1, 0)
    slot_of_a = engine._known[a.request_id].slot
    assert a.cancel()
    engine.step()
    assert a.done and a.result().finish_reason == FinishReason.CANCELLED
    assert 0 < len(a.result().token_ids) < 40
    assert engine._known[c.request_id].slot == slot_of_a, "the waiting request did not get the freed slot"
    assert not a.cancel(), "cancelling a finished request must report False"
    b.cancel()
    # c reuses a's slot (and KV rows): its tokens must still be exactly right.
    assert c.result().token_ids == transformers_greedy(reference_model, PROMPTS[3], 10)
    assert engine.stats().free_slots == 2 and not engine.has_work


def test_cancelling_a_waiting_request_never_runs_it(engine):
    running = [engine.add_request(p, greedy(20)) for p in PROMPTS[:2]]
    waiting = engine.add_request(PROMPTS[2], greedy(20))
    engine.step()
    waiting.cancel()
    engine.step()
    assert waiting.result().finish_reason == FinishReason.CANCELLED and waiting.result().token_ids == []
    for h in running:
        h.cancel()
    engine.step()
    assert engine.stats().free_slots == 2


def test_more_requests_than_slots_queue_and_all_finish(engine, reference_model):
    handles = [engine.add_request(p, greedy(n)) for p, n in zip(PROMPTS, MAX_TOKENS)]
    engine.step()
    stats = engine.stats()
    assert (stats.running, stats.waiting) == (2, 3)
    for h, p, n in zip(handles, PROMPTS, MAX_TOKENS):
        assert h.result().token_ids == transformers_greedy(reference_model, p, n)


def test_a_bounded_queue_refuses_clearly_and_stays_healthy(runtime, reference_model):
    with Engine(runtime, config=EngineConfig(max_queued=1)) as engine:
        handles = [engine.add_request(PROMPTS[0], greedy(8))]
        engine.step()
        handles.append(engine.add_request(PROMPTS[1], greedy(8)))
        engine.step()  # both slots busy now
        handles.append(engine.add_request(PROMPTS[2], greedy(4)))  # the one allowed to wait
        with pytest.raises(QueueFullError, match=r"max_queued.*at most 1 waiting"):
            engine.add_request(PROMPTS[3], greedy(4))
        for h, p, n in zip(handles, PROMPTS, (8, 8, 4)):
            assert h.result().token_ids == transformers_greedy(reference_model, p, n)


def test_a_request_stops_at_the_sequence_length(runtime):
    with Engine(runtime) as engine:
        prompt = PROMPTS[4]  # 21 tokens; sequence_length 64
        done = engine.add_request(prompt, greedy(500)).result()
    assert done.finish_reason == FinishReason.LENGTH
    assert len(prompt) + len(done.token_ids) == runtime.config.sequence_length
