"""Prefix caching and long prompts in the Engine: greedy tokens against transformers on the same weights, and the
hit counters. The tiny batch-2 artifact (max_context_length 32, sequence_length 64) has chunked-prefill graphs.

A shared prefix is reused in place (a finished request's free slot still holds it) or copied from a busy slot;
either way the continuation must be transformers' own, and a prefix caching that reused the wrong rows (or none)
would show in the tokens or the counters."""

from __future__ import annotations

import random

import pytest
from support.tiny import transformers_greedy

from neuron_infer.engine import Engine, EngineConfig, RequestParams


def ids(seed: int, n: int, vocab: int = 49152) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(n)]


SYSTEM = [1, *ids(0, 23)]  # 24 tokens shared by the prompts below


def greedy(n: int) -> RequestParams:
    return RequestParams(max_tokens=n, ignore_eos=True)


@pytest.fixture
def cached(runtime, tokenizer):
    with Engine(runtime, tokenizer, EngineConfig(min_prefix_tokens=8)) as engine:
        assert engine.prefix_caching, "the tiny artifact has chunked-prefill graphs: prefix caching is on by default"
        yield engine


def test_prompt_longer_than_the_largest_bucket_is_encoded_in_chunks(engine, reference_model):
    prompt = [1, *ids(1, 49)]  # 50 tokens: over max_context_length=32, under sequence_length=64
    assert len(prompt) > engine.runtime.config.max_context_length
    out = engine.generate([prompt], greedy(8))[0]
    assert out.error is None
    assert out.token_ids == transformers_greedy(reference_model, prompt, 8)


def test_prompt_over_sequence_length_is_refused(engine):
    from neuron_infer.engine import RequestError

    with pytest.raises(RequestError, match="sequence_length - 1"):
        engine.add_request([1, *ids(2, 63)], greedy(1))


def test_finished_request_prefix_is_reused_in_place(cached, reference_model):
    a, b = SYSTEM + ids(3, 4), SYSTEM + ids(4, 6)
    first = cached.generate([a], greedy(5))[0]
    second = cached.generate([b], greedy(7))[0]
    assert first.token_ids == transformers_greedy(reference_model, a, 5)
    assert second.token_ids == transformers_greedy(reference_model, b, 7)
    stats = cached.stats().prefix_cache
    assert (stats.queries, stats.hits, stats.hit_tokens, stats.copies) == (2, 1, len(SYSTEM), 0)
    assert stats.prompt_tokens == len(a) + len(b)


def test_running_request_prefix_is_copied_to_a_new_slot(cached, reference_model):
    a, b = SYSTEM + ids(5, 3), SYSTEM + ids(6, 5)
    ha = cached.add_request(a, greedy(9))
    cached.step()  # a is prefilled and decoding in one slot
    hb = cached.add_request(b, greedy(6))  # joins while a runs: the prefix is copied from a's slot
    ra, rb = ha.result(), hb.result()
    assert ra.token_ids == transformers_greedy(reference_model, a, 9)
    assert rb.token_ids == transformers_greedy(reference_model, b, 6)
    stats = cached.stats().prefix_cache
    assert (stats.hits, stats.copies, stats.hit_tokens) == (1, 1, len(SYSTEM))


def test_generated_tokens_are_reusable_too(cached, reference_model):
    """A chat's next turn repeats the previous prompt and answer: both are in the slot's rows."""
    turn1 = SYSTEM + ids(7, 4)
    answer = cached.generate([turn1], greedy(6))[0].token_ids
    turn2 = turn1 + answer + ids(8, 5)
    out = cached.generate([turn2], greedy(4))[0]
    assert out.token_ids == transformers_greedy(reference_model, turn2, 4)
    # The decode wrote the answer's rows but the last sampled token (never fed back): all but it are reused.
    assert cached.stats().prefix_cache.hit_tokens == len(turn1) + len(answer) - 1


@pytest.fixture(scope="module")
def full_batch_only(tiny_checkpoint, tmp_path_factory):
    """The tiny artifact without the one-row decode graph: every decode step runs both rows."""
    from support.tiny import export_tiny

    from neuron_cache import Artifact
    from neuron_infer import DecoderRuntime

    path = export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("art") / "tiny-no-rows", decode_batches=[])
    runtime = DecoderRuntime(Artifact.open(path))
    assert runtime.config.decode_rows == [] and runtime.config.chunk_buckets
    return runtime


def test_free_rows_keep_their_prefix_through_full_batch_decodes(full_batch_only, tokenizer, reference_model):
    """While one request decodes through the full-batch graph, the free slot that holds a finished prefix must
    not be overwritten (the step runs every row; a free row would write token 0 at position 0): a later request
    still reuses it exactly."""
    with Engine(full_batch_only, tokenizer, EngineConfig(min_prefix_tokens=8)) as cached:
        a = SYSTEM + ids(9, 2)
        cached.generate([a], greedy(2))  # slot 0 now holds SYSTEM + ...
        other = [1, *ids(10, 10)]
        cached.generate([other], greedy(12))  # runs in the other, empty slot while slot 0 is free
        b = SYSTEM + ids(11, 3)
        out = cached.generate([b], greedy(6))[0]
        assert out.token_ids == transformers_greedy(reference_model, b, 6)
        assert cached.stats().prefix_cache.hit_tokens == len(SYSTEM)


def test_short_shared_prefixes_are_encoded_again(cached):
    cached.generate([[1, *ids(12, 10)]], greedy(1))
    cached.generate([[1, *ids(12, 6), *ids(13, 4)]], greedy(1))  # shares 7 < min_prefix_tokens=8
    stats = cached.stats().prefix_cache
    assert (stats.hits, stats.hit_tokens) == (0, 0)


def test_prefix_caching_off(runtime, tokenizer, reference_model):
    with Engine(runtime, tokenizer, EngineConfig(prefix_caching=False)) as engine:
        a, b = SYSTEM + ids(14, 2), SYSTEM + ids(15, 2)
        outs = engine.generate([a, b], greedy(5))
        assert [o.token_ids for o in outs] == [transformers_greedy(reference_model, p, 5) for p in (a, b)]
        assert engine.stats().prefix_cache is None
