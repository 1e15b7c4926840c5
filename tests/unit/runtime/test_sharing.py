"""Sharing blocks through `PagedKVCache`: fork with copy-on-write, prefix
matching (whole and partial blocks), eviction of cached blocks, the
statistics that show it, and bad input that must change nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from llmir.errors import (
    ConfigError,
    DTypeError,
    LLMIRError,
    SequenceError,
    ShapeError,
    UnknownSequenceError,
)
from llmir.runtime import PagedKVCache
from llmir.runtime.eviction import LRUEviction
from llmir.runtime.prefix_cache import ROOT_HASH, block_hash
from llmir.testing import DenseReferenceCache, prefix_kv

L, H, D, B = 2, 2, 8, 4
StateFn = Callable[[PagedKVCache], tuple[Any, bytes]]


def make(num_blocks: int = 32, **options: Any) -> PagedKVCache:
    return PagedKVCache(L, H, D, B, 64, num_blocks=num_blocks, **options)


def prefill(cache: PagedKVCache, seq: int, tokens: list[int], start: int = 0) -> None:
    """Append tokens[start:] of `seq` (K/V as the prefix determines them)."""
    keys, values = prefix_kv(tokens, L, H, D, start)
    cache.append_kv_all_layers(
        keys[:, None], values[:, None], [seq], token_ids=[tokens[start:]]
    )


def stored(cache: PagedKVCache, seq: int, layer: int = 0) -> np.ndarray[Any, Any]:
    keys, _ = cache.lookup_sequences([seq], layer)
    return keys[0]


# -- hashing ------------------------------------------------------------------


def test_block_hash_chains_the_parent() -> None:
    tokens = np.arange(4, dtype=np.int32)
    first = block_hash(ROOT_HASH, tokens)
    assert first == block_hash(ROOT_HASH, tokens.astype(np.int64))
    assert first != block_hash(ROOT_HASH, tokens[::-1])
    # The same block after another prefix is another block.
    assert block_hash(first, tokens) != first
    assert block_hash(first, tokens) != block_hash(first + 1, tokens)
    assert first < 1 << 128


# -- fork ---------------------------------------------------------------------


def test_fork_shares_every_block_and_copies_nothing() -> None:
    cache = make()
    prefill(cache, 0, list(range(10)))
    before = cache.stats()
    cache.fork(0, 1)
    stats = cache.stats()
    assert stats.blocks_used == before.blocks_used == 3
    assert stats.blocks_shared == 3 and stats.block_references == 6
    assert stats.sharing_factor == 2.0 and stats.blocks_saved == 3
    assert (cache.blocks_of(0) == cache.blocks_of(1)).all()
    assert cache.seq_len(1) == 10
    cache.check_invariants()


def test_copy_on_write_copies_only_the_partly_filled_block() -> None:
    cache = make()
    tokens = list(range(10))
    prefill(cache, 0, tokens)
    cache.fork_sequences([0, 0], [1, 2])
    prefill(cache, 1, [*tokens, 42], start=10)
    stats = cache.stats()
    assert stats.cow_copies == 1 and stats.blocks_used == 4
    parent, child = cache.blocks_of(0), cache.blocks_of(1)
    assert (parent[:2] == child[:2]).all() and parent[2] != child[2]
    # The child sees the parent's tokens plus its own; the parent is intact.
    np.testing.assert_array_equal(
        stored(cache, 1), prefix_kv([*tokens, 42], L, H, D)[0][0]
    )
    np.testing.assert_array_equal(stored(cache, 0), prefix_kv(tokens, L, H, D)[0][0])
    # Two holders left of the original block: one more copy, then the last
    # holder writes in place.
    prefill(cache, 2, [*tokens, 43], start=10)
    prefill(cache, 0, [*tokens, 44], start=10)
    assert cache.stats().cow_copies == 2
    cache.check_invariants()


def test_copy_on_write_per_layer_copies_once() -> None:
    cache = make()
    tokens = list(range(6))
    prefill(cache, 0, tokens)
    cache.fork(0, 1)
    keys, values = prefix_kv([*tokens, 9], L, H, D, 6)
    for layer in range(L):
        cache.append_kv(keys[layer][None], values[layer][None], [1], layer)
    assert cache.stats().cow_copies == 1
    for layer in range(L):
        np.testing.assert_array_equal(
            stored(cache, 1, layer), prefix_kv([*tokens, 9], L, H, D)[0][layer]
        )
        np.testing.assert_array_equal(
            stored(cache, 0, layer), prefix_kv(tokens, L, H, D)[0][layer]
        )
    cache.check_invariants()


def test_freeing_drops_references_until_the_last_holder() -> None:
    cache = make()
    prefill(cache, 0, list(range(8)))
    cache.fork(0, 1)
    cache.free_sequence(0)
    assert cache.stats().blocks_used == 2
    cache.free_sequence(1)
    assert cache.stats().blocks_used == 0 and cache.stats().blocks_free == 32


# -- prefix matching ------------------------------------------------------------


def test_match_attaches_whole_blocks_and_copies_a_partial_one() -> None:
    cache = make(enable_prefix_caching=True)
    prompt = list(range(12))
    prefill(cache, 0, prompt)
    query = [*prompt[:9], 99, 99]  # 2 whole blocks + 1 token of the third
    assert cache.match_prefix(1, query) == 9
    assert (cache.blocks_of(1)[:2] == cache.blocks_of(0)[:2]).all()
    assert cache.blocks_of(1)[2] != cache.blocks_of(0)[2]
    prefill(cache, 1, query, start=9)
    np.testing.assert_array_equal(stored(cache, 1), prefix_kv(query, L, H, D)[0][0])
    stats = cache.stats()
    assert stats.prefix_hit_tokens == 9 and stats.prefix_partial_hit_tokens == 1
    assert stats.hit_rate == 9 / 11
    cache.check_invariants()


def test_match_always_leaves_the_last_token_to_compute() -> None:
    cache = make(enable_prefix_caching=True)
    prompt = list(range(8))
    prefill(cache, 0, prompt)
    # All 8 tokens are cached: 1 whole block and 3 of 4 tokens of the next.
    assert cache.match_prefix(1, prompt) == 7
    assert cache.match_prefix(2, prompt[:1]) == 0
    cache.check_invariants()


def test_freed_blocks_stay_matchable_until_evicted() -> None:
    cache = make(num_blocks=4, enable_prefix_caching=True)
    prompt = list(range(9))
    prefill(cache, 0, prompt)
    cache.free_sequence(0)
    stats = cache.stats()
    # The two full blocks keep their hash; the partial one is plain free.
    assert (stats.blocks_cached, stats.blocks_free, stats.blocks_used) == (2, 2, 0)
    assert cache.match_prefix(1, prompt) == 8
    cache.free_sequence(1)
    # Filling the pool evicts the cached blocks, oldest (tail) first.
    prefill(cache, 2, [50 + t for t in range(13)])
    assert cache.stats().evictions == 2
    assert cache.match_prefix(3, prompt) == 0
    cache.check_invariants()


def test_full_block_rule_would_hit_less() -> None:
    """A prefix that ends inside a block: the partial copy beats vLLM's
    full-blocks-only rule."""
    cache = make(enable_prefix_caching=True)
    shared = list(range(10))
    prefill(cache, 0, [*shared, 70, 71])
    hit = cache.match_prefix(1, [*shared, 80, 81])
    full_blocks_only = len(shared) // B * B
    assert hit == 10 > full_blocks_only == 8


def test_tokens_without_ids_are_not_indexed() -> None:
    cache = make(enable_prefix_caching=True)
    keys, values = prefix_kv(list(range(8)), L, H, D)
    cache.append_kv_all_layers(keys[:, None], values[:, None], [0])
    assert cache.match_prefix(1, list(range(8))) == 0


def test_priority_eviction_keeps_the_high_priority_prompt() -> None:
    cache = make(num_blocks=6, enable_prefix_caching=True, eviction="priority")
    important, other = list(range(8)), [20 + t for t in range(8)]
    prefill(cache, 0, important)
    prefill(cache, 1, other)
    cache.set_priority(0, 5)
    cache.free_sequences([0, 1])
    prefill(cache, 2, [40 + t for t in range(16)])  # 4 blocks: evicts 2
    assert cache.match_prefix(3, [*important, 1]) == 8
    assert cache.match_prefix(4, [*other, 1]) == 0


def test_custom_policy_object() -> None:
    policy = LRUEviction()
    cache = make(enable_prefix_caching=True, eviction=policy)
    assert cache.allocator.eviction is policy
    assert cache.options.eviction_name == "lru"


def test_working_set_beyond_the_pool_never_runs_out() -> None:
    cache = make(num_blocks=8, enable_prefix_caching=True)
    rng = np.random.default_rng(1)
    for seq in range(30):  # 30 prompts of 3 blocks through a pool of 8
        prompt = rng.integers(0, 3, 12).tolist()
        start = cache.match_prefix(seq, prompt)
        prefill(cache, seq, prompt, start)
        cache.free_sequence(seq)
        cache.check_invariants()
    assert cache.stats().evictions > 0


def test_dense_reference_matches_at_least_as_much() -> None:
    """The reference is an unbounded prefix cache: a full pool matches less,
    never more."""
    for num_blocks in (4, 32):
        cache = make(num_blocks=num_blocks, enable_prefix_caching=True)
        dense = DenseReferenceCache.from_geometry(
            cache.geometry, num_blocks, cache.options
        )
        prompt = list(range(12))
        for c in (cache, dense):
            prefill(c, 0, prompt)  # pyright: ignore[reportArgumentType]
            c.free_sequences([0])
            prefill(c, 1, [30 + t for t in range(16)])  # pyright: ignore[reportArgumentType]
        got = cache.match_prefixes([2], [prompt])
        want = dense.match_prefixes([2], [prompt])
        assert got[0] <= want[0] == 11
        assert (got[0] == want[0]) == (num_blocks == 32)


# -- bad input -------------------------------------------------------------------


def _primed() -> PagedKVCache:
    cache = make(enable_prefix_caching=True)
    prefill(cache, 0, list(range(6)))
    prefill(cache, 1, list(range(3)))
    keys, values = prefix_kv(list(range(3)), L, H, D)
    cache.append_kv(keys[0][None, 2:], values[0][None, 2:], [1], 0)  # uneven
    return cache


BAD_CALLS: list[tuple[str, Callable[[PagedKVCache], object], type[Exception]]] = [
    (
        "match into an existing sequence",
        lambda c: c.match_prefix(0, [1, 2]),
        SequenceError,
    ),
    (
        "match a repeated id",
        lambda c: c.match_prefixes([5, 5], [[1], [2]]),
        SequenceError,
    ),
    ("match with 2-D ids", lambda c: c.match_prefix(5, [[1, 2]]), ShapeError),
    ("match float ids", lambda c: c.match_prefix(5, [1.5]), DTypeError),
    ("match ids beyond int32", lambda c: c.match_prefix(5, [1 << 40]), ShapeError),
    (
        "match with padding inside a prompt",
        lambda c: c.match_prefixes([5], [[1, -1, 2]]),
        ShapeError,
    ),
    ("match batch mismatch", lambda c: c.match_prefixes([5, 6], [[1, 2]]), ShapeError),
    ("fork into an existing id", lambda c: c.fork(0, 1), SequenceError),
    ("fork a missing sequence", lambda c: c.fork(9, 10), UnknownSequenceError),
    ("fork a half-appended sequence", lambda c: c.fork(1, 10), SequenceError),
    (
        "fork into one child twice",
        lambda c: c.fork_sequences([0, 0], [7, 7]),
        SequenceError,
    ),
    (
        "fork a child that is a parent",
        lambda c: c.fork_sequences([0, 7], [7, 8]),
        SequenceError,
    ),
    (
        "fork parents/children mismatch",
        lambda c: c.fork_sequences([0], [7, 8]),
        ShapeError,
    ),
    (
        "token ids fewer than tokens",
        lambda c: c.append_kv(
            np.zeros((1, 2, H, D), np.float32),
            np.zeros((1, 2, H, D), np.float32),
            [0],
            token_ids=[[1]],
        ),
        ShapeError,
    ),
    (
        "negative token ids",
        lambda c: c.append_kv_all_layers(
            np.zeros((L, 1, 1, H, D), np.float32),
            np.zeros((L, 1, 1, H, D), np.float32),
            [0],
            token_ids=[[-3]],
        ),
        ShapeError,
    ),
    ("priority not an int", lambda c: c.set_priority(0, 1.5), ConfigError),
    (
        "priority of a missing sequence",
        lambda c: c.set_priority(9, 1),
        UnknownSequenceError,
    ),
    (
        "free with a bool priority",
        lambda c: c.free_sequence(0, priority=True),
        ConfigError,
    ),
]


@pytest.mark.parametrize(
    ("call", "error"),
    [(call, error) for _, call, error in BAD_CALLS],
    ids=[name for name, _, _ in BAD_CALLS],
)
def test_bad_sharing_input_changes_nothing(
    call: Callable[[PagedKVCache], object],
    error: type[Exception],
    cache_state: StateFn,
) -> None:
    cache = _primed()
    before = cache_state(cache)
    stats = cache.stats()
    with pytest.raises(error) as caught:
        call(cache)
    assert isinstance(caught.value, LLMIRError)
    assert cache_state(cache) == before
    assert cache.stats() == stats


def test_matching_needs_prefix_caching() -> None:
    cache = make()
    with pytest.raises(ConfigError, match="enable_prefix_caching"):
        cache.match_prefix(0, [1, 2, 3])


def test_unknown_eviction_policy() -> None:
    with pytest.raises(ConfigError, match="'mru'"):
        make(eviction="mru")
    with pytest.raises(ConfigError, match="bool"):
        make(enable_prefix_caching=1)


def test_partial_reuse_keeps_the_source_blocks_retention_priority() -> None:
    cache = PagedKVCache(
        1, 1, 4, 4, 32, num_blocks=4, enable_prefix_caching=True, eviction="priority"
    )

    def store(seq: int, tokens: list[int], priority: int) -> None:
        k, v = prefix_kv(tokens, 1, 1, 4)
        cache.append_kv_all_layers(k[:, None], v[:, None], [seq], token_ids=[tokens])
        cache.set_priority(seq, priority)
        cache.free_sequence(seq)

    store(0, [1, 2, 3, 4, 5], 5)  # its full block kept longer
    store(1, [9, 9, 9, 9, 9], 1)
    assert cache.match_prefix(2, [1, 2, 7, 7, 7]) == 2  # copies part of it
    k, v = prefix_kv([0] * 5, 1, 1, 4)
    cache.append_kv_all_layers(k[:, None], v[:, None], [3])  # evicts one block
    assert cache.match_prefix(4, [1, 2, 3, 4, 5]) == 4  # priority 5 survived
    assert cache.match_prefix(5, [9, 9, 9, 9, 9]) == 0  # priority 1 went


def test_empty_and_ragged_prompts() -> None:
    cache = PagedKVCache(1, 1, 4, 4, 32, num_blocks=8, enable_prefix_caching=True)
    assert cache.match_prefix(0, []) == 0
    assert cache.match_prefixes([1, 2], np.zeros((2, 0), np.int32)).tolist() == [0, 0]
    before = cache.snapshot()
    with pytest.raises(DTypeError, match="are not integers"):
        cache.match_prefix(3, [1, [2]])
    assert cache.snapshot() == before
