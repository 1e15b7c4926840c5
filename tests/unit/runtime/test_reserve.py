"""Reserved steps: `reserve_slots` once per step, `write_kv` per layer, the
same stored values as per-layer appends, and slots that cannot write outside
the blocks a sequence holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from llmir.errors import (
    BlockTableError,
    DTypeError,
    LLMIRError,
    SequenceError,
    SequenceTooLongError,
    ShapeError,
)
from llmir.runtime import PagedKVCache

L, H, D, B = 3, 2, 8, 4
StateFn = Callable[[PagedKVCache], tuple[Any, bytes]]


def kv(*shape: int, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((*shape, H, D), np.float32)


def test_reserved_step_stores_what_per_layer_appends_store() -> None:
    appended = PagedKVCache(L, H, D, B, 32, "f16", num_blocks=16)
    reserved = PagedKVCache(L, H, D, B, 32, "f16", num_blocks=16)
    for step, t in enumerate((5, 1, 1, 3)):
        x = kv(L, 2, t, seed=step)
        slots, table, lens = reserved.reserve_slots([4, 9], t)
        assert slots.shape == (L, 2, t) and not slots.flags.writeable
        for layer in range(L):
            appended.append_kv(x[layer], -x[layer], [4, 9], layer)
            reserved.write_kv(x[layer], -x[layer], slots, layer)
        assert np.array_equal(lens, appended.block_table([4, 9])[1])
        assert np.array_equal(table, reserved.block_table([4, 9])[0])
    for layer in range(L):
        want = appended.lookup_sequences([4, 9], layer)
        got = reserved.lookup_sequences([4, 9], layer)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_uneven_layers_continue_where_each_stands() -> None:
    cache = PagedKVCache(L, H, D, B, 32, num_blocks=16)
    x = kv(1, 2)
    cache.append_kv(x, x, [0], 0)  # layer 0 two tokens ahead
    slots, _, lens = cache.reserve_slots([0], 1)
    block = int(cache.blocks_of(0)[0])
    assert slots[:, 0, 0].tolist() == [block * B + 2, block * B, block * B]
    assert lens.tolist() == [3] and cache.layer_lens(0).tolist() == [3, 1, 1]


@pytest.fixture
def primed() -> tuple[PagedKVCache, np.ndarray[Any, Any]]:
    cache = PagedKVCache(L, H, D, B, 16, num_blocks=8)
    slots, _, _ = cache.reserve_slots([0, 1], 2)
    return cache, slots


BAD: list[tuple[str, Callable[[PagedKVCache, Any], object], type[Exception]]] = [
    (
        "slot outside the pool",
        lambda c, s: c.write_kv(kv(1, 1), kv(1, 1), np.array([[99]], np.int32), 0),
        BlockTableError,
    ),
    (
        "slot in a free block",
        lambda c, s: c.write_kv(kv(1, 1), kv(1, 1), np.array([[20]], np.int32), 0),
        BlockTableError,
    ),
    (
        "negative slot",
        lambda c, s: c.write_kv(kv(1, 1), kv(1, 1), np.array([[-1]], np.int32), 0),
        BlockTableError,
    ),
    (
        "int64 slots",
        lambda c, s: c.write_kv(kv(1, 1), kv(1, 1), np.array([[0]]), 0),
        DTypeError,
    ),
    (
        "keys not fitting the reservation",
        lambda c, s: c.write_kv(kv(2, 1), kv(2, 1), s, 0),
        ShapeError,
    ),
    (
        "a layer out of range",
        lambda c, s: c.write_kv(kv(2, 2), kv(2, 2), s, L),
        ShapeError,
    ),
    ("negative token count", lambda c, s: c.reserve_slots([0], -1), ShapeError),
    (
        "reservation too long",
        lambda c, s: c.reserve_slots([0], 15),
        SequenceTooLongError,
    ),
]


@pytest.mark.parametrize(
    ("call", "error"), [(c, e) for _, c, e in BAD], ids=[n for n, _, _ in BAD]
)
def test_bad_writes_change_nothing(
    primed: tuple[PagedKVCache, Any],
    call: Callable[[PagedKVCache, Any], object],
    error: type[Exception],
    cache_state: StateFn,
) -> None:
    cache, slots = primed
    before = cache_state(cache)
    with pytest.raises(error) as caught:
        call(cache, slots)
    assert isinstance(caught.value, LLMIRError)
    assert cache_state(cache) == before


def test_a_reservation_is_not_trusted_after_its_blocks_are_freed(
    primed: tuple[PagedKVCache, Any],
) -> None:
    cache, slots = primed
    cache.free_sequences([0, 1])
    with pytest.raises(BlockTableError, match="reservation was revoked"):
        cache.write_kv(kv(2, 2), kv(2, 2), slots, 0)
    # A copy of it is checked slot by slot: its blocks are free now.
    with pytest.raises(BlockTableError, match="no sequence holds"):
        cache.write_kv(kv(2, 2), kv(2, 2), np.array(slots), 0)


def test_a_parent_with_unwritten_reserved_slots_cannot_fork() -> None:
    # The child would share the reserved block before the step fills it and
    # copy it empty on its first append: refused, as a half-appended step is.
    cache = PagedKVCache(L, H, D, B, 16, num_blocks=8)
    cache.append_kv_all_layers(kv(L, 1, 2)[:, :, :], kv(L, 1, 2, seed=1), [0])
    slots, _, _ = cache.reserve_slots([0], 1)
    cache.write_kv(kv(1, 1), kv(1, 1), slots, 0)
    before = cache.snapshot()
    with pytest.raises(
        SequenceError,
        match=r"sequence 0 has reserved slots not yet written in layer\(s\) \[1, 2\]",
    ):
        cache.fork(0, 1)
    assert cache.snapshot() == before
    for layer in (1, 2):
        cache.write_kv(kv(1, 1), kv(1, 1), slots, layer)
    cache.fork(0, 1)  # the step is whole now
    assert cache.seq_len(1) == 3


def test_every_reservation_held_is_revoked_with_its_blocks() -> None:
    # Not only the last: an older reservation whose sequence was freed, its
    # block taken by another sequence, is refused too.
    cache = PagedKVCache(L, H, D, B, 16, num_blocks=2)
    older, _, _ = cache.reserve_slots([0], 1)
    newer, _, _ = cache.reserve_slots([1], 1)
    cache.free_sequence(0)
    cache.append_kv_all_layers(kv(L, 1, 1, seed=2), kv(L, 1, 1, seed=2), [2])
    keys_before, _ = cache.lookup_sequences([2], 0)
    with pytest.raises(BlockTableError, match="reservation was revoked"):
        cache.write_kv(kv(1, 1), kv(1, 1), older, 0)
    keys_after, _ = cache.lookup_sequences([2], 0)
    np.testing.assert_array_equal(keys_before, keys_after)
    cache.write_kv(kv(1, 1), kv(1, 1), newer, 0)  # sequence 1 kept its block
