"""BlockAllocator and KVBlock."""

from __future__ import annotations

import numpy as np
import pytest

from llmir.errors import (
    AllocatorError,
    ConfigError,
    DoubleFreeError,
    OutOfBlocksError,
    UnknownBlockError,
)
from llmir.runtime import BlockAllocator, KVBlock
from llmir.runtime.eviction import PriorityEviction


def _check_invariants(a: BlockAllocator) -> None:
    refs = a.ref_counts()
    free = a.free_block_ids()
    assert a.num_free + a.num_used == a.num_blocks
    assert len(set(free.tolist())) == free.size == a.num_free
    assert set(free.tolist()) == set(np.flatnonzero(refs == 0).tolist())


def test_allocate_is_all_or_nothing() -> None:
    a = BlockAllocator(8)
    ids = a.allocate(5)
    assert ids.dtype == np.int32 and sorted(ids.tolist()) == [0, 1, 2, 3, 4]
    before = a.snapshot()
    with pytest.raises(OutOfBlocksError, match="asked for 4 blocks, only 3 of 8"):
        a.allocate(4)
    assert a.snapshot() == before
    assert a.allocate(3).size == 3
    assert a.num_free == 0
    _check_invariants(a)


def test_free_returns_blocks_and_reuses_them() -> None:
    a = BlockAllocator(4)
    ids = a.allocate(4)
    a.release(ids[:2])
    assert a.num_free == 2
    again = a.allocate(2)
    assert sorted(again.tolist()) == sorted(ids[:2].tolist())
    _check_invariants(a)


def test_share_and_release_count_references() -> None:
    a = BlockAllocator(4)
    (b,) = a.allocate(1).tolist()
    a.share([b, b])
    assert a.ref_count(b) == 3
    a.release([b])
    a.release([b, b])
    assert a.ref_count(b) == 0 and a.num_free == 4
    _check_invariants(a)


def test_double_free_is_an_error_and_changes_nothing() -> None:
    a = BlockAllocator(4)
    ids = a.allocate(2)
    a.release(ids[:1])
    before = a.snapshot()
    with pytest.raises(DoubleFreeError, match=f"block {ids[0]} released 1 time"):
        a.release(ids[:1])
    # Listing a block twice in one call is a double free too, and the other
    # block of the call must not be released either.
    with pytest.raises(DoubleFreeError):
        a.release([int(ids[1]), int(ids[1])])
    assert a.snapshot() == before


@pytest.mark.parametrize("bad", [-1, 4, 100])
def test_unknown_block_is_an_error(bad: int) -> None:
    a = BlockAllocator(4)
    a.allocate(2)
    before = a.snapshot()
    with pytest.raises(
        UnknownBlockError, match=f"block {bad} is outside the pool of 4"
    ):
        a.release([0, bad])
    with pytest.raises(UnknownBlockError):
        a.share([bad])
    with pytest.raises(UnknownBlockError):
        a.block(bad)
    assert a.snapshot() == before


def test_share_of_a_free_block_is_an_error() -> None:
    a = BlockAllocator(4)
    with pytest.raises(AllocatorError, match="cannot share block 3: it is free"):
        a.share([3])


def test_reset_frees_everything() -> None:
    a = BlockAllocator(6)
    a.allocate(4)
    a.reset()
    assert a.num_free == 6 and a.snapshot() == BlockAllocator(6).snapshot()


def test_kvblock_is_a_live_view() -> None:
    a = BlockAllocator(4)
    block = a.allocate_block()
    assert isinstance(block, KVBlock)
    assert (block.ref_count, block.num_filled, block.content_hash) == (1, 0, None)
    a.set_num_filled([block.block_id], [5])
    block.content_hash = 1234
    a.share([block.block_id])
    assert (block.ref_count, block.num_filled, block.content_hash) == (2, 5, 1234)
    a.release([block.block_id, block.block_id])
    # A hashed block stays matchable after its last release: cached-free.
    assert (block.ref_count, block.num_filled, block.content_hash) == (0, 5, 1234)
    assert block.is_free and a.num_cached == 1 and a.num_free == 4
    assert a.block(block.block_id) == block
    with pytest.raises(AllocatorError):
        block.content_hash = 1
    # Evicted when the pool needs it: then the per-block state is cleared.
    a.allocate(4)
    assert (block.ref_count, block.num_filled, block.content_hash) == (1, 0, None)
    assert a.evictions == 1
    a.check_invariants()


def _hashed(a: BlockAllocator, count: int) -> list[int]:
    ids = a.allocate(count).tolist()
    for b in ids:
        a.set_content_hash(b, 1000 + b)
    return ids


def test_never_hashed_blocks_go_first_then_lru_victims() -> None:
    a = BlockAllocator(6)
    evicted: list[tuple[int, int]] = []
    a.on_evict(evicted.extend)
    first = _hashed(a, 3)  # 0 1 2
    a.release(first[::-1])  # tail first: 2, 1, 0 in eviction order
    assert (a.num_free, a.num_cached, a.num_used) == (6, 3, 0)
    a.check_invariants()
    assert a.allocate(3).tolist() == [3, 4, 5]  # the never-hashed ones
    assert a.allocate(2).tolist() == [2, 1]  # then the cached, tail first
    assert evicted == [(2, 1002), (1, 1001)] and a.evictions == 2
    assert a.content_hash(0) == 1000 and a.num_cached == 1
    a.check_invariants()


def test_revive_takes_a_cached_block_back() -> None:
    a = BlockAllocator(3)
    (b,) = _hashed(a, 1)
    a.release([b])
    a.revive(b)
    assert a.ref_count(b) == 1 and a.num_cached == 0 and a.content_hash(b) == 1000 + b
    with pytest.raises(AllocatorError, match="is not cached-free"):
        a.revive(b)
    a.check_invariants()


def test_priority_eviction_keeps_high_priority_blocks() -> None:
    a = BlockAllocator(4, PriorityEviction())
    low = _hashed(a, 2)
    high = _hashed(a, 2)
    a.release(high, priority=9)
    a.release(low, priority=1)
    assert sorted(a.allocate(2).tolist()) == sorted(low)
    assert all(a.content_hash(b) is not None for b in high)
    a.check_invariants()


def test_allocation_succeeds_while_evictable_blocks_exist() -> None:
    a = BlockAllocator(4)
    a.release(_hashed(a, 4))
    assert a.num_free == 4
    assert len(a.allocate(4)) == 4 and a.evictions == 4
    with pytest.raises(OutOfBlocksError, match="asked for 1 blocks, only 0"):
        a.allocate(1)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"num_blocks must be in \[1, "):
        BlockAllocator(0)
    with pytest.raises(ConfigError, match="num_blocks must be an integer"):
        BlockAllocator(4.0)  # pyright: ignore[reportArgumentType]


@pytest.mark.parametrize("count", [1.5, True, "2", None])
def test_allocate_takes_integers_only(count: object) -> None:
    a = BlockAllocator(4)
    before = a.snapshot()
    with pytest.raises(AllocatorError, match="block count must be an integer"):
        a.allocate(count)  # pyright: ignore[reportArgumentType]
    assert a.snapshot() == before
    assert a.allocate(np.int64(2)).tolist() == [0, 1]


def test_block_ids_may_come_as_any_iterable() -> None:
    a = BlockAllocator(6)
    ids = a.allocate(4).tolist()
    a.share(i for i in ids[:2])
    a.release({ids[0]})
    a.release(range(ids[0], ids[0] + 1))
    assert a.ref_count(ids[0]) == 0 and a.ref_count(ids[1]) == 2
    with pytest.raises(AllocatorError, match="must be integers"):
        a.release([1.5])
