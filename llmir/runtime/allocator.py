"""`BlockAllocator`: the fixed pool of physical KV blocks.

Invariants (checked by the tests after every operation):
  * ``num_free + num_used == num_blocks``.
  * A block is free iff its ref count is 0; the free stack holds exactly the
    free blocks, each once.
  * A free block has ``num_filled == 0`` and no content hash.

The pool is created once; allocation pops ids from an int32 array used as a
stack and freeing pushes them back, so both are O(1) per block with no
per-call array growth.  Every multi-block operation validates all of its
arguments before it changes anything: it either succeeds completely or raises
and leaves the allocator as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
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
from llmir.runtime.geometry import positive_int

IntArray = npt.NDArray[np.int32]


class BlockAllocator:
    """A fixed pool of `num_blocks` blocks with reference counting."""

    def __init__(self, num_blocks: int) -> None:
        self._num_blocks = positive_int("num_blocks", num_blocks)
        # Free stack: ids in _free_stack[:_num_free] are free.  Initialised in
        # descending order so that the first allocations return 0, 1, 2, ...
        self._free_stack: IntArray = np.arange(num_blocks - 1, -1, -1, dtype=np.int32)
        self._num_free = self._num_blocks
        self._ref_counts: IntArray = np.zeros(num_blocks, dtype=np.int32)
        self._num_filled: IntArray = np.zeros(num_blocks, dtype=np.int32)
        # Sparse: few blocks carry a hash, and only once prefix caching exists.
        self._hashes: dict[int, int] = {}

    # -- sizes ---------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def num_free(self) -> int:
        return self._num_free

    @property
    def num_used(self) -> int:
        return self._num_blocks - self._num_free

    # -- allocation ----------------------------------------------------------

    def allocate(self, count: int) -> IntArray:
        """Take `count` free blocks (ref count 1 each), all or none.

        Raises OutOfBlocksError, naming the request and the free count, when
        fewer than `count` blocks are free; nothing is allocated then.
        """
        count = _checked_count(count)
        if count > self._num_free:
            raise OutOfBlocksError(
                f"asked for {count} blocks, only {self._num_free} of "
                f"{self._num_blocks} are free"
            )
        top = self._num_free - count
        # Reversed so ids come out in the order they were pushed last-in-first.
        ids = self._free_stack[top : self._num_free][::-1].copy()
        self._num_free = top
        self._ref_counts[ids] = 1
        return ids

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

    def release(self, block_ids: Iterable[int] | npt.ArrayLike) -> None:
        """Drop one reference from each listed block; blocks reaching zero
        return to the free stack.  Releasing a block more often than it is
        referenced raises DoubleFreeError and changes nothing."""
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
        freed = uniq[self._ref_counts[uniq] == 0].astype(np.int32)
        n = freed.size
        if n:
            self._free_stack[self._num_free : self._num_free + n] = freed
            self._num_free += n
            self._num_filled[freed] = 0
            if self._hashes:
                for b in freed.tolist():
                    self._hashes.pop(b, None)

    free = release
    """Alias of `release`: freeing is dropping the last reference."""

    def reset(self) -> None:
        """Return every block to the pool, as right after construction."""
        self._free_stack[:] = np.arange(self._num_blocks - 1, -1, -1, dtype=np.int32)
        self._num_free = self._num_blocks
        self._ref_counts.fill(0)
        self._num_filled.fill(0)
        self._hashes.clear()

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

    def free_block_ids(self) -> IntArray:
        """A copy of the free stack, top last."""
        return self._free_stack[: self._num_free].copy()

    def filled_slots(self) -> int:
        """Token slots holding data, summed over allocated blocks."""
        return int(self._num_filled.sum(dtype=np.int64))

    def snapshot(self) -> tuple[bytes, bytes, bytes, int, tuple[tuple[int, int], ...]]:
        """The complete state, comparable with ``==`` (for tests)."""
        return (
            self._free_stack[: self._num_free].tobytes(),
            self._ref_counts.tobytes(),
            self._num_filled.tobytes(),
            self._num_free,
            tuple(sorted(self._hashes.items())),
        )

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
