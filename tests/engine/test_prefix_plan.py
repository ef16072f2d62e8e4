"""PrefixCache.plan: which slot a prompt gets and how much of it is reused (the bookkeeping alone; the Engine
tests in test_engine_prefix.py check the reused rows' numerics against transformers)."""

from __future__ import annotations

import pytest

from neuron_infer.engine.prefix import PrefixCache, common_prefix


def test_common_prefix_across_slice_boundaries():
    a = list(range(200))
    for n in (0, 1, 63, 64, 65, 128, 199, 200):
        b = a[:n] + [-1] * 5
        assert common_prefix(a, b) == n
    assert common_prefix(a, a[:70]) == 70


def test_no_match_takes_an_empty_slot_before_one_holding_a_prefix():
    cache = PrefixCache(3, min_tokens=4)
    cache.record(0, list(range(10)), 10)
    plan = cache.plan([100, 101, 102, 103, 104, 105], free=[0, 1, 2])
    assert (plan.slot, plan.reuse, plan.source) == (1, 0, None)
    assert cache.stats.hits == 0 and cache.stats.queries == 1


def test_free_slot_holding_the_prefix_is_reused_in_place():
    cache = PrefixCache(3, min_tokens=4)
    cache.record(2, list(range(10)), 10)
    plan = cache.plan([*range(8), 50, 51], free=[0, 1, 2])
    assert (plan.slot, plan.reuse, plan.source) == (2, 8, None)


def test_busy_slot_prefix_is_copied_into_the_least_recently_used_free_slot():
    cache = PrefixCache(4, min_tokens=4)
    cache.record(1, [7, 7, 7], 3)  # older content
    cache.record(3, [8, 8, 8], 3)  # newer content
    cache.record(0, list(range(30)), 30)  # busy (not in `free`)
    plan = cache.plan([*range(20), 99], free=[1, 2, 3])
    assert (plan.slot, plan.reuse, plan.source) == (2, 20, 0)  # empty slot 2 first
    plan = cache.plan([*range(20), 99], free=[1, 3])
    assert (plan.slot, plan.source) == (1, 0)  # then the least recently filled
    assert cache.stats.copies == 2


def test_reuse_leaves_the_last_prompt_token_to_encode():
    cache = PrefixCache(2, min_tokens=2)
    cache.record(0, [5, 6, 7, 8], 4)
    assert cache.plan([5, 6, 7, 8], free=[0, 1]).reuse == 3  # its logits pick the first new token


def test_only_held_rows_count():
    cache = PrefixCache(2, min_tokens=2)
    tokens = [5, 6, 7, 8, 9]
    cache.record(0, tokens, 2)
    cache.advance(0, 4)
    assert cache.plan([5, 6, 7, 8, 9, 10], free=[1]).reuse == 4
    cache.forget(0)
    assert cache.plan([5, 6, 7, 8, 9, 10], free=[1]).reuse == 0


def test_short_matches_and_disabled_cache_reuse_nothing():
    cache = PrefixCache(2, min_tokens=8)
    cache.record(0, list(range(10)), 10)
    assert cache.plan([*range(7), 70], free=[0, 1]).reuse == 0
    assert cache.plan([*range(10), 70], free=[1, 0], enabled=False) == cache.plan([1], free=[0, 1],
                                                                                        enabled=False)
    assert cache.plan([1], free=[1, 0], enabled=False).slot == 0  # lowest free, as without a cache


def test_hold_rows_rewrite_the_last_held_entry():
    cache = PrefixCache(3)
    cache.record(0, [11, 12, 13], 3)
    cache.record(2, [21, 22], 1)
    assert cache.hold_rows([0, 1, 2]) == {0: (13, 2), 2: (21, 0)}


def test_errors():
    cache = PrefixCache(1)
    with pytest.raises(ValueError, match="no free slot"):
        cache.plan([1, 2], free=[])
    with pytest.raises(ValueError, match="cannot hold 3 tokens"):
        cache.record(0, [1, 2], 3)
    with pytest.raises(ValueError, match="min_tokens=0"):
        PrefixCache(1, min_tokens=0)
