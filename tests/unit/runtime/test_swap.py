"""Swapping sequences out to the file tier and back: bit-identical data in
new blocks, shared blocks left to their other holders, all-or-nothing
failures, and a swapped sequence that refuses to be used."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmir.errors import (
    LLMIRError,
    OutOfBlocksError,
    SequenceError,
    SequenceSwappedError,
    SwapSpaceFullError,
    UnknownSequenceError,
)
from llmir.runtime import PagedKVCache

L, H, D, B = 2, 2, 8, 4
StateFn = Callable[[PagedKVCache], tuple[Any, bytes]]


def make(
    tmp_path: Path, dtype: str = "f16", blocks: int = 16, swap: int = 16
) -> PagedKVCache:
    return PagedKVCache(
        L,
        H,
        D,
        B,
        64,
        dtype,
        num_blocks=blocks,
        swap_blocks=swap,
        swap_dir=str(tmp_path),
    )


def fill(cache: PagedKVCache, ids: list[int], tokens: int, seed: int = 0) -> None:
    x = np.random.default_rng(seed).standard_normal(
        (L, len(ids), tokens, H, D), np.float32
    )
    cache.append_kv_all_layers(x, -x, ids)


def contents(cache: PagedKVCache, seq: int) -> list[Any]:
    return [cache.lookup_sequences([seq], layer) for layer in range(L)]


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_swap_out_and_in_is_bit_identical(tmp_path: Path, dtype: str) -> None:
    cache = make(tmp_path, dtype)
    fill(cache, [0, 1], 10)
    before = contents(cache, 0)
    old_blocks = cache.blocks_of(0)
    assert cache.swap_out([0]) == 3
    assert cache.is_swapped(0) and not cache.is_swapped(1)
    stats = cache.stats()
    assert (stats.blocks_used, stats.swap_blocks_used, stats.swapped_sequences) == (
        3,
        3,
        1,
    )
    fill(cache, [7], 8, seed=1)  # the freed blocks are reused meanwhile
    assert cache.swap_in([0]) == 3
    assert not np.array_equal(cache.blocks_of(0), old_blocks)
    for (k, v), (k0, v0) in zip(contents(cache, 0), before, strict=True):
        np.testing.assert_array_equal(k, k0)
        np.testing.assert_array_equal(v, v0)
    stats = cache.stats()
    assert (stats.swaps_out, stats.swaps_in, stats.swap_blocks_used) == (1, 1, 0)
    assert stats.swap_bytes_moved == 6 * cache.geometry.bytes_per_block
    cache.check_invariants()


def test_the_tier_is_a_file_in_the_directory_given(tmp_path: Path) -> None:
    cache = make(tmp_path)
    files = list(tmp_path.glob("llmir-swap-*.bin"))
    assert len(files) == 1
    assert files[0].stat().st_size == 16 * cache.geometry.bytes_per_block
    cache.close()
    assert not files[0].exists()


def test_a_shared_block_stays_with_its_other_holder(tmp_path: Path) -> None:
    cache = make(tmp_path)
    fill(cache, [0], 10)
    cache.fork(0, 1)
    child = contents(cache, 1)
    cache.swap_out([0])
    # The child still holds all three blocks; the parent's copies are in the tier.
    assert cache.stats().blocks_used == 3 and cache.stats().swap_blocks_used == 3
    fill(cache, [1], 1, seed=2)  # the child writes on (copy-on-write no longer needed)
    cache.swap_in([0])
    assert cache.seq_len(0) == 10 and cache.seq_len(1) == 11
    for (k, _), (k1, _) in zip(contents(cache, 0), child, strict=True):
        np.testing.assert_array_equal(k, k1)
    cache.check_invariants()


def test_freeing_a_swapped_sequence_frees_its_slots(tmp_path: Path) -> None:
    cache = make(tmp_path)
    fill(cache, [0, 1], 6)
    cache.swap_out([0, 1])
    cache.free_sequences([0])
    assert cache.stats().swap_blocks_used == 2
    cache.free_sequences([1])
    stats = cache.stats()
    assert stats.swap_blocks_used == 0 and stats.blocks_used == 0
    cache.check_invariants()


def _primed(tmp_path: Path) -> PagedKVCache:
    cache = make(tmp_path, blocks=8, swap=4)
    fill(cache, [0, 1], 8)  # 2 blocks each
    cache.swap_out([1])
    fill(cache, [2], 16, seed=3)  # takes the rest: 6 of 8 blocks in use
    return cache


BAD: list[tuple[str, Callable[[PagedKVCache], object], type[Exception]]] = [
    ("append to a swapped sequence", lambda c: fill(c, [1], 1), SequenceSwappedError),
    (
        "table of a swapped sequence",
        lambda c: c.block_table([0, 1]),
        SequenceSwappedError,
    ),
    ("fork a swapped sequence", lambda c: c.fork(1, 9), SequenceSwappedError),
    (
        "reserve for a swapped sequence",
        lambda c: c.reserve_slots([1], 1),
        SequenceSwappedError,
    ),
    ("swap out twice", lambda c: c.swap_out([1]), SequenceSwappedError),
    ("swap out a missing sequence", lambda c: c.swap_out([5]), UnknownSequenceError),
    ("swap in a resident sequence", lambda c: c.swap_in([0]), SequenceError),
    ("tier too small", lambda c: c.swap_out([0, 2]), SwapSpaceFullError),
]


@pytest.mark.parametrize(
    ("call", "error"), [(c, e) for _, c, e in BAD], ids=[n for n, _, _ in BAD]
)
def test_bad_swaps_change_nothing(
    tmp_path: Path,
    call: Callable[[PagedKVCache], object],
    error: type[Exception],
    cache_state: StateFn,
) -> None:
    cache = _primed(tmp_path)
    _assert_rejected(cache, lambda: call(cache), error, cache_state)


def test_swapping_in_without_room_moves_nothing(
    tmp_path: Path, cache_state: StateFn
) -> None:
    cache = _primed(tmp_path)
    fill(cache, [3], 8, seed=4)  # the pool is full now
    _assert_rejected(cache, lambda: cache.swap_in([1]), OutOfBlocksError, cache_state)


def _assert_rejected(
    cache: PagedKVCache,
    call: Callable[[], object],
    error: type[Exception],
    cache_state: StateFn,
) -> None:
    space = cache.sequences.swap
    assert space is not None
    before = cache_state(cache)
    tier = space.space.blocks.copy()
    with pytest.raises(error) as caught:
        call()
    assert isinstance(caught.value, LLMIRError)
    assert cache_state(cache) == before
    np.testing.assert_array_equal(space.space.blocks, tier)
    cache.check_invariants()


def test_a_cache_without_a_tier_says_so() -> None:
    cache = PagedKVCache(L, H, D, B, 64, num_blocks=4)
    fill(cache, [0], 2)
    with pytest.raises(SequenceError, match="no swap space"):
        cache.swap_out([0])


def test_a_bad_swap_directory() -> None:
    from llmir.errors import ConfigError

    with pytest.raises(ConfigError, match="is not a directory"):
        PagedKVCache(
            L, H, D, B, 64, num_blocks=4, swap_blocks=2, swap_dir="/nonexistent/x"
        )
    with pytest.raises(ConfigError, match="swap_blocks"):
        PagedKVCache(L, H, D, B, 64, num_blocks=4, swap_blocks=-1)
    assert os.path.isdir("/tmp")
