"""`BlockAllocator`: the fixed pool of physical KV blocks.

A block is in one of three states:

* *used*: held by at least one block table (ref count > 0);
* *cached-free*: held by none, but its content hash is kept (prefix caching):
  a later sequence with the same prefix may take it back as it is, until the
  allocator needs it for something else and evicts it (`EvictionPolicy`
  picks which first);
* *free*: no ref count, no hash; on the free stack.

Invariants (checked by `check_invariants`, which the tests call after every
operation):
  * ``free + cached + used == num_blocks``; `num_free` (what an allocation
    may take) counts free and cached-free blocks.
  * A block has ref count 0 iff it is free or cached-free; the free stack
    holds exactly the free blocks, each once; the eviction policy exactly the
    cached-free ones.
  * A free block has ``num_filled == 0`` and no hash; a cached-free block
    has a hash.

The pool is created once; allocation pops ids from an int32 array used as a
stack and freeing pushes them back, so both are O(1) per block with no
per-call array growth.  Every multi-block operation validates all of its
arguments before it changes anything: it either succeeds completely or raises
and leaves the allocator as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import (
    AllocatorError,
    DoubleFreeError,
    OutOfBlocksError,
    UnknownBlockError,
)
from llmir.runtime.block import KVBlock
from llmir.runtime.eviction import EvictionPolicy, LRUEviction
from llmir.runtime.geometry import positive_int

IntArray = npt.NDArray[np.int32]


EvictionListener = Callable[[list[tuple[int, int]]], None]
"""Told (block, hash) of every cached-free block evicted."""


class BlockAllocator:
    """A fixed pool of `num_blocks` blocks with reference counting and,
    for blocks that keep a content hash after their last release, eviction
    by `eviction` (LRU by default)."""

    def __init__(self, num_blocks: int, eviction: EvictionPolicy | None = None) -> None:
        self._num_blocks = positive_int("num_blocks", num_blocks)
        self._evictable: EvictionPolicy = (
            LRUEviction() if eviction is None else eviction
        )
        self._on_evict: EvictionListener | None = None
        self.evictions = 0
        """Cached-free blocks given up so far (for statistics)."""
        # Free stack: ids in _free_stack[:_num_free] are free.  Initialised in
        # descending order so that the first allocations return 0, 1, 2, ...
        self._free_stack: IntArray = np.arange(num_blocks - 1, -1, -1, dtype=np.int32)
        self._num_free = self._num_blocks
        self._ref_counts: IntArray = np.zeros(num_blocks, dtype=np.int32)
        self._num_filled: IntArray = np.zeros(num_blocks, dtype=np.int32)
        # Sparse: only full blocks of prefix-cached sequences carry a hash.
        self._hashes: dict[int, int] = {}

    # -- sizes ---------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def num_free(self) -> int:
        """Blocks an allocation may take: free and cached-free."""
        return self._num_free + len(self._evictable)

    @property
    def num_cached(self) -> int:
        """Cached-free blocks: free, but still matchable by their hash."""
        return len(self._evictable)

    @property
    def num_used(self) -> int:
        return self._num_blocks - self.num_free

    @property
    def eviction(self) -> EvictionPolicy:
        return self._evictable

    def on_evict(self, listener: EvictionListener | None) -> None:
        """Call `listener` with the (block, hash) pairs of each eviction."""
        self._on_evict = listener

    # -- allocation ----------------------------------------------------------

    def allocate(self, count: int) -> IntArray:
        """Take `count` free blocks (ref count 1 each), all or none.

        Raises OutOfBlocksError, naming the request and the free count, when
        fewer than `count` blocks are free; nothing is allocated then.
        """
        count = _checked_count(count)
        if count > self.num_free:
            raise OutOfBlocksError(
                f"asked for {count} blocks, only {self.num_free} of "
                f"{self._num_blocks} are free"
            )
        # Never-hashed blocks first; then cached-free ones, by policy.
        take = min(count, self._num_free)
        top = self._num_free - take
        # Reversed so ids come out in the order they were pushed last-in-first.
        ids = self._free_stack[top : self._num_free][::-1].copy()
        self._num_free = top
        if take < count:
            victims = self._evictable.pop(count - take)
            evicted = [(b, self._hashes.pop(b)) for b in victims]
            self._num_filled[victims] = 0
            self.evictions += len(victims)
            if self._on_evict is not None:
                self._on_evict(evicted)
            ids = np.concatenate([ids, np.asarray(victims, np.int32)])
        self._ref_counts[ids] = 1
        return ids

    def revive(self, block_id: int) -> None:
        """Take a cached-free block back as it is (a prefix match): ref
        count 1, no longer evictable."""
        b = self._checked_id(block_id)
        if b not in self._evictable:
            raise AllocatorError(f"block {b} is not cached-free")
        self._evictable.remove(b)
        self._ref_counts[b] = 1

    def priority_of(self, block_id: int) -> int:
        """The retention priority a cached-free block waits with: the
        policy's, where it keeps one (`PriorityEviction`), else 0."""
        priority_of = getattr(self._evictable, "priority_of", None)
        return 0 if priority_of is None else int(priority_of(block_id))

    def take_back(self, block_ids: IntArray) -> None:
        """Attach trusted, distinct block ids to one more holder each (a
        prefix match): cached-free ones are taken out of eviction with ref
        count 1, used ones gain a reference.  No checks: bookkeeping use."""
        refs = self._ref_counts[block_ids]
        cached = block_ids[refs == 0]
        for b in cached.tolist():
            self._evictable.remove(b)
        self._ref_counts[block_ids] = refs + 1

    def allocate_block(self) -> KVBlock:
        """Take one free block and return its handle."""
        return KVBlock(self, int(self.allocate(1)[0]))

    def share(self, block_ids: Iterable[int] | npt.ArrayLike) -> None:
        """Add one reference to each listed block (a block listed twice gains
        two).  Every block must be allocated; nothing changes otherwise."""
        ids = self._checked_ids(block_ids)
        if ids.size == 0:
            return
        free = ids[self._ref_counts[ids] == 0]
        if free.size:
            raise AllocatorError(f"cannot share block {int(free[0])}: it is free")
        np.add.at(self._ref_counts, ids, 1)

    def release(
        self, block_ids: Iterable[int] | npt.ArrayLike, priority: int = 0
    ) -> None:
        """Drop one reference from each listed block.  Blocks reaching zero
        become cached-free if they carry a hash (handed to the eviction
        policy in the order listed, with `priority`), else free.  Releasing
        a block more often than it is referenced raises DoubleFreeError and
        changes nothing."""
        ids = self._checked_ids(block_ids)
        if ids.size == 0:
            return
        uniq, counts = np.unique(ids, return_counts=True)
        refs = self._ref_counts[uniq]
        over = counts > refs
        if over.any():
            i = int(np.argmax(over))
            raise DoubleFreeError(
                f"block {int(uniq[i])} released {int(counts[i])} time(s) but "
                f"its ref count is {int(refs[i])}"
            )
        self._ref_counts[uniq] = refs - counts.astype(np.int32)
        if not (self._ref_counts[uniq] == 0).any():
            return
        if self._hashes:
            # Keep the caller's order: it is the eviction order.
            order = ids[self._ref_counts[ids] == 0]
            seen: set[int] = set()
            cached: list[int] = []
            plain: list[int] = []
            for b in order.tolist():
                if b not in seen:
                    seen.add(b)
                    (cached if b in self._hashes else plain).append(b)
            self._evictable.push(cached, priority)
            freed = np.asarray(plain, np.int32)
        else:
            freed = uniq[self._ref_counts[uniq] == 0].astype(np.int32)
        n = freed.size
        if n:
            self._free_stack[self._num_free : self._num_free + n] = freed
            self._num_free += n
            self._num_filled[freed] = 0

    free = release
    """Alias of `release`: freeing is dropping the last reference."""

    def reset(self) -> None:
        """Return every block to the pool, as right after construction."""
        self._free_stack[:] = np.arange(self._num_blocks - 1, -1, -1, dtype=np.int32)
        self._num_free = self._num_blocks
        self._ref_counts.fill(0)
        self._num_filled.fill(0)
        self._hashes.clear()
        self._evictable.clear()

    # -- per-block state -----------------------------------------------------

    def block(self, block_id: int) -> KVBlock:
        """A live handle on block `block_id`."""
        return KVBlock(self, self._checked_id(block_id))

    def ref_count(self, block_id: int) -> int:
        return int(self._ref_counts[self._checked_id(block_id)])

    def num_filled(self, block_id: int) -> int:
        return int(self._num_filled[self._checked_id(block_id)])

    def set_num_filled(self, block_ids: npt.ArrayLike, filled: npt.ArrayLike) -> None:
        """Record how many token slots of each block hold data.  Used by the
        cache's bookkeeping; duplicates in `block_ids` must carry equal
        values."""
        self._num_filled[np.asarray(block_ids)] = filled

    def content_hash(self, block_id: int) -> int | None:
        return self._hashes.get(self._checked_id(block_id))

    def set_content_hash(self, block_id: int, value: int | None) -> None:
        b = self._checked_id(block_id)
        if self._ref_counts[b] == 0:
            raise AllocatorError(f"cannot set the content hash of free block {b}")
        if value is None:
            self._hashes.pop(b, None)
        else:
            self._hashes[b] = int(value)

    def ref_counts(self) -> IntArray:
        """A copy of all ref counts (index = block id)."""
        return self._ref_counts.copy()

    def ref_counts_of(self, block_ids: IntArray) -> IntArray:
        """The ref counts of trusted block ids (no checks: bookkeeping use)."""
        return self._ref_counts[block_ids]

    def num_filled_of(self, block_ids: IntArray) -> IntArray:
        """The filled slots of trusted block ids (no checks: bookkeeping use)."""
        return self._num_filled[block_ids]

    def free_block_ids(self) -> IntArray:
        """A copy of the free stack, top last."""
        return self._free_stack[: self._num_free].copy()

    def filled_slots(self) -> int:
        """Token slots holding data, summed over used blocks."""
        used = self._ref_counts > 0
        return int(self._num_filled[used].sum(dtype=np.int64))

    def shared_blocks(self) -> tuple[int, int]:
        """(blocks held by more than one table, references to used blocks)."""
        refs = self._ref_counts
        return int((refs > 1).sum()), int(refs.sum(dtype=np.int64))

    def snapshot(self) -> tuple[Any, ...]:
        """The complete state, comparable with ``==`` (for tests)."""
        cached = sorted(b for b in range(self._num_blocks) if b in self._evictable)
        return (
            self._free_stack[: self._num_free].tobytes(),
            self._ref_counts.tobytes(),
            self._num_filled.tobytes(),
            self._num_free,
            tuple(sorted(self._hashes.items())),
            tuple(cached),
            self.evictions,
        )

    def check_invariants(self) -> None:
        """Assert the invariants of the module docstring (for tests)."""
        free = self._free_stack[: self._num_free]
        assert np.unique(free).size == free.size, "a block is twice on the stack"
        zero = np.flatnonzero(self._ref_counts == 0)
        cached = [b for b in zero.tolist() if b in self._evictable]
        assert len(cached) == len(self._evictable), "evictable blocks are in use"
        assert sorted(free.tolist() + cached) == zero.tolist(), "free set mismatch"
        assert (self._ref_counts >= 0).all()
        assert not self._num_filled[free].any(), "a free block holds tokens"
        assert all(b not in self._hashes for b in free.tolist()), "a free block hashed"
        assert all(b in self._hashes for b in cached), "a cached block lost its hash"
        used = int((self._ref_counts > 0).sum())
        assert free.size + len(cached) + used == self._num_blocks

    # -- argument checks -----------------------------------------------------

    def _checked_id(self, block_id: int) -> int:
        b = int(block_id)
        if not 0 <= b < self._num_blocks:
            raise UnknownBlockError(
                f"block {b} is outside the pool of {self._num_blocks} blocks"
            )
        return b

    def _checked_ids(self, block_ids: Iterable[int] | npt.ArrayLike) -> IntArray:
        """`block_ids` as a flat int32 array, every id inside the pool."""
        source: Any = block_ids
        if not isinstance(source, np.ndarray) and isinstance(source, Iterable):
            source = list(source)  # generators, sets, ranges
        ids = np.asarray(source).ravel()
        if ids.size and (
            ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer)
        ):
            raise AllocatorError(f"block ids must be integers, got dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self._num_blocks)]
        if bad.size:
            raise UnknownBlockError(
                f"block {int(bad[0])} is outside the pool of {self._num_blocks} blocks"
            )
        return ids.astype(np.int32, copy=False)

    def __repr__(self) -> str:
        return f"BlockAllocator(num_blocks={self._num_blocks}, free={self._num_free})"


def _checked_count(count: object) -> int:
    """A block count: a non-negative Python or numpy integer (not a bool)."""
    if isinstance(count, bool | np.bool_) or not isinstance(count, int | np.integer):
        raise AllocatorError(f"block count must be an integer, got {count!r}")
    if count < 0:
        raise AllocatorError(f"cannot allocate a negative number of blocks ({count})")
    return int(count)
