"""`KVBlock`: a handle on one physical block of the KV pool.

The allocator keeps the state of all blocks as parallel arrays (a
struct-of-arrays: reference counts, tokens filled, content hashes), because
per-step bookkeeping updates many blocks at once and numpy does that in one
call.  A `KVBlock` is a live view of one entry of those arrays: reading its
fields always reflects the allocator's current state.
"""

from __future__ import annotations

from typing import Protocol


class BlockStates(Protocol):
    """Where a `KVBlock` reads its fields (`BlockAllocator` provides it)."""

    def ref_count(self, block_id: int) -> int: ...
    def num_filled(self, block_id: int) -> int: ...
    def content_hash(self, block_id: int) -> int | None: ...
    def set_content_hash(self, block_id: int, value: int | None) -> None: ...


class KVBlock:
    """One physical block: `block_size` token slots of K and V for every
    layer and head.

    Fields:
      * ``block_id``: index of the block in the pool (axis 1 of ``kv_pool``).
      * ``ref_count``: how many block tables hold this block (0 = free).
      * ``num_filled``: tokens of the block that hold data (<= block_size).
      * ``content_hash``: the hash of the block's token prefix once it is
        full, for prefix caching; ``None`` until someone sets it.  Freeing the
        block clears it.
    """

    __slots__ = ("_allocator", "block_id")

    def __init__(self, allocator: BlockStates, block_id: int) -> None:
        self._allocator = allocator
        self.block_id = block_id

    @property
    def ref_count(self) -> int:
        return self._allocator.ref_count(self.block_id)

    @property
    def num_filled(self) -> int:
        return self._allocator.num_filled(self.block_id)

    @property
    def is_free(self) -> bool:
        return self.ref_count == 0

    @property
    def content_hash(self) -> int | None:
        return self._allocator.content_hash(self.block_id)

    @content_hash.setter
    def content_hash(self, value: int | None) -> None:
        self._allocator.set_content_hash(self.block_id, value)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, KVBlock)
            and other._allocator is self._allocator
            and other.block_id == self.block_id
        )

    def __hash__(self) -> int:
        return hash((id(self._allocator), self.block_id))

    def __repr__(self) -> str:
        return (
            f"KVBlock(id={self.block_id}, ref_count={self.ref_count}, "
            f"num_filled={self.num_filled}, content_hash={self.content_hash})"
        )
