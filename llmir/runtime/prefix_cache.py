"""Prefix caching: which stored blocks hold which tokens, so that a new
sequence whose prompt starts like an earlier one reuses that one's blocks
instead of storing (and computing) them again.

A block is registered once it is full in every layer and its tokens are
known.  Its hash chains the hash of the block before it in its sequence with
its own token ids, so equal hashes mean equal prefixes, not just equal
blocks (vLLM's scheme):

    hash(block j) = BLAKE2b-128(hash(block j-1) || token ids of block j)

BLAKE2b, because a hit hands one sequence another's keys and values: a
cryptographic hash makes a false match (a collision) practically impossible
(2^-64 for 16-byte digests, birthday bound), unlike Python's `hash`, which
collides by design and is salted per process; and among the strong hashes of
the standard library it is the fastest here and takes a digest size.

Besides the hash index, the cache keeps each registered block's token ids
and, per parent hash, its child blocks: that is what finds a cached block
sharing only the first k < B tokens of a new prompt's next block, whose k
tokens are then copied instead of recomputed (partial-block reuse, as
TensorRT-LLM does; vLLM reuses full blocks only).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from llmir.runtime.allocator import BlockAllocator

IntArray = npt.NDArray[np.int32]

ROOT_HASH = 0
"""The 'parent hash' of a sequence's first block."""

_DIGEST_BYTES = 16


def block_hash(parent: int, tokens: npt.NDArray[np.integer]) -> int:
    """The chained hash of a full block holding `tokens` after `parent`."""
    return _hash(parent, np.ascontiguousarray(tokens, dtype="<i4").tobytes())


def _hash(parent: int, token_bytes: bytes) -> int:
    """`block_hash` of tokens already as little-endian int32 bytes."""
    digest = hashlib.blake2b(
        parent.to_bytes(_DIGEST_BYTES, "little"), digest_size=_DIGEST_BYTES
    )
    digest.update(token_bytes)
    return int.from_bytes(digest.digest(), "little")


@dataclass
class PrefixStats:
    """Counters of prefix matching since the cache was created."""

    queries: int = 0
    query_tokens: int = 0
    hit_tokens: int = 0
    partial_hit_tokens: int = 0
    """Of the hit tokens, those copied from a partly matching block."""

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


@dataclass(frozen=True)
class Match:
    """What a prompt matched: full blocks (in order, with their hashes) and
    possibly the first `partial_tokens` tokens of one more block."""

    blocks: list[int]
    hashes: list[int]
    partial_block: int | None
    partial_tokens: int

    def tokens(self, block_size: int) -> int:
        return len(self.blocks) * block_size + self.partial_tokens


class PrefixCache:
    """The index from chained block hash to block, kept in step with the
    allocator: a block evicted by the allocator is forgotten here."""

    def __init__(self, allocator: BlockAllocator, block_size: int) -> None:
        self.allocator = allocator
        self.block_size = block_size
        self.stats = PrefixStats()
        self._by_hash: dict[int, int] = {}
        self._tokens: dict[int, IntArray] = {}
        self._children: dict[int, dict[int, None]] = {}
        self._parent: dict[int, int] = {}
        allocator.on_evict(self._forget)

    def __len__(self) -> int:
        return len(self._by_hash)

    def register(self, block: int, parent: int, tokens: IntArray) -> int:
        """Record that `block` (full, in use) holds `tokens` after the prefix
        `parent`; returns its hash.  When another block already holds that
        prefix, it stays the one matched and `block` is left unhashed."""
        h = block_hash(parent, tokens)
        if h not in self._by_hash:
            self._by_hash[h] = block
            self._tokens[block] = np.array(tokens, dtype=np.int32)
            self._children.setdefault(parent, {})[block] = None
            self._parent[block] = parent
            self.allocator.set_content_hash(block, h)
        return h

    def match(self, tokens: IntArray, limit: int) -> Match:
        """The longest cached prefix of `tokens` of at most `limit` tokens:
        whole blocks by hash, then the longest common start of one more
        cached block that follows them."""
        b = self.block_size
        blocks: list[int] = []
        hashes: list[int] = []
        parent = ROOT_HASH
        # One conversion, then a bytes slice per block: the loop is the cost.
        data = np.ascontiguousarray(tokens[: limit // b * b], dtype="<i4").tobytes()
        step = 4 * b
        by_hash = self._by_hash
        for start in range(0, len(data), step):
            h = _hash(parent, data[start : start + step])
            block = by_hash.get(h)
            if block is None:
                break
            blocks.append(block)
            hashes.append(h)
            parent = h
        start = len(blocks) * b
        best, best_k = None, 0
        want = tokens[start : min(start + b, limit)]
        for child in self._children.get(parent, {}):
            k = _common_prefix(self._tokens[child], want)
            if k > best_k:
                best, best_k = child, k
        return Match(blocks, hashes, best, best_k)

    def _forget(self, evicted: list[tuple[int, int]]) -> None:
        for block, h in evicted:
            del self._by_hash[h]
            del self._tokens[block]
            parent = self._parent.pop(block)
            children = self._children[parent]
            del children[block]
            if not children:
                del self._children[parent]

    def indexed_blocks(self) -> list[int]:
        """Every block in the index."""
        return list(self._by_hash.values())

    def chain_tokens(self, block: int) -> IntArray | None:
        """The token ids of the whole prefix that ends with indexed `block`
        (what its hash stands for), or None when a block before it in the
        chain has been evicted."""
        parts = [self._tokens[block]]
        parent = self._parent[block]
        while parent != ROOT_HASH:
            above = self._by_hash.get(parent)
            if above is None:
                return None
            parts.append(self._tokens[above])
            parent = self._parent[above]
        return np.concatenate(parts[::-1])

    def clear(self) -> None:
        self._by_hash.clear()
        self._tokens.clear()
        self._children.clear()
        self._parent.clear()

    def check_invariants(self) -> None:
        """Every indexed block carries its hash in the allocator (for tests)."""
        for h, block in self._by_hash.items():
            assert self.allocator.content_hash(block) == h
            assert block_hash(self._parent[block], self._tokens[block]) == h


def _common_prefix(a: IntArray, b: npt.NDArray[np.integer]) -> int:
    n = min(a.size, b.size)
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n
