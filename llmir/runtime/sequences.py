"""Host-side bookkeeping of the paged KV cache: which blocks each sequence
owns, how many tokens each layer of it holds, and where every new token goes
(the "slot mapping").  No tensor data lives here, so the CPU and the CUDA
storage backends share all of it.

Length semantics.  A sequence's length counts tokens, not layer writes.  Each
sequence keeps, per layer, the number of tokens written to that layer
(``written[l]``); its length is the maximum over layers.  An append of ``T``
tokens to layer ``l`` writes positions ``[written[l], written[l] + T)``, so
appending one step to layer 0, then layer 1, ... gives every layer the same
positions and the same physical blocks: the first layer's append grows the
sequence (and allocates blocks), the following ones fill in behind it.  The
whole-step form appends to every layer at positions ``[length, length + T)``
and so requires all layers to be level (no step half-appended).  While a step
is half-appended, positions of the lagging layers between their ``written``
and the length hold stale data: a lookup of such a layer sees them.

One block table per sequence serves all layers: block ``j`` of a sequence
holds tokens ``[j * block_size, (j + 1) * block_size)`` of every layer.

State is kept as numpy arrays indexed by a *row* (a dense slot per live
sequence, recycled after free) so that one decode step of a whole batch is a
handful of vectorized operations instead of a Python loop per sequence.

Every append is split into `plan_append` (all checks, no mutation) and
`commit_append` (mutation that cannot fail), so a rejected call leaves the
bookkeeping exactly as it was.

Decode appends the same batch over and over, so two small caches keep the
per-step Python work flat: the rows of the last fully known batch (reused
while no sequence is added or freed), and the slot mapping of its last
commit, which layers 1..L-1 of a layer-by-layer step reuse when they write
the very positions layer 0 just wrote.  Measured for a batch of 256 and 32
layers: ~0.2 us of bookkeeping per sequence per step with the whole-step
form, ~1.2 us layer by layer.

Block tables grow with use: the table array is as wide as the longest
sequence needs (doubling when it must), not `max_seq_len / block_size` times
the number of sequences up front.

Sharing.  Blocks may be held by several sequences: `fork` gives a child its
parent's blocks (ref counts up, nothing copied), and `match_prefix` attaches
the cached blocks of an earlier sequence with the same prompt start
(`llmir.runtime.prefix_cache`).  An append that starts inside a shared,
partly filled block first copies that one block (copy-on-write), so a
sequence only ever writes blocks it alone holds.  With prefix caching on,
appends may carry token ids; each block that becomes full in every layer with
known tokens is registered under its chained hash.

Pruning (StreamingLLM).  With a window of W tokens (and S sinks), every
block that lies wholly outside the first S tokens and the last W is given
back as the sequence grows: its table entry becomes a hole (-1) and the
holes of a row are always the logical blocks ``[sink_blocks, hole_end)``.
The cut follows the shortest layer before the append (``m``): the queries
of this step and later sit at positions ``>= m`` and see nothing below
``m - W + 1``, so the step's own attention is never short of a key.  A
sequence then holds at most ``ceil(S/B) + ceil(W/B) + 1`` blocks.  Pruning
happens at the start of an append's commit, so the blocks it frees serve
that very append.

Heavy hitters (H2O, at block granularity).  With a block budget N instead,
nothing is cut at the window: when an append would make a sequence hold
more than N blocks, the blocks with the least accumulated attention mass
(`add_block_mass`, fed by the cache's attention calls) among those outside
the sinks and the recent window go back, leaving holes anywhere between.

Not thread-safe by itself: `PagedKVCache` holds its lock around every plan
and commit.  Sequence ids reach this class already checked
(`llmir.runtime.validation.check_seq_ids`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import (
    OutOfBlocksError,
    SequenceError,
    SequenceSwappedError,
    SequenceTooLongError,
    UnknownSequenceError,
)
from llmir.runtime.allocator import BlockAllocator
from llmir.runtime.geometry import PAD_BLOCK, CacheGeometry
from llmir.runtime.prefix_cache import ROOT_HASH, PrefixCache
from llmir.runtime.swap import SwapTier
from llmir.runtime.validation import check_unique

IntArray = npt.NDArray[np.int32]

BlockCopier = Callable[[IntArray, IntArray, int | None], None]
"""Copies blocks src[i] -> dst[i] in every layer: whole, or their first
`tokens` slots (the storage's `Backend.copy_blocks`)."""

_INITIAL_ROWS = 16
_INITIAL_COLUMNS = 8


@dataclass(frozen=True)
class AppendPlan:
    """A checked append: what `commit_append` will do."""

    seq_ids: npt.NDArray[np.int64]
    rows: npt.NDArray[np.int64]  # -1: a new sequence, row assigned on commit
    num_tokens: int
    layer: int | None  # None: all layers
    start: npt.NDArray[np.int64]  # first position written, per sequence
    blocks_needed: int
    fill_in: bool = False  # reuses the previous commit's slots (plan_append)
    copy_on_write: npt.NDArray[np.int64] | None = None
    """Batch indices whose first written block is shared: copied first."""
    token_ids: npt.NDArray[np.int32] | None = None
    """[batch, T] token ids of the appended positions (prefix caching)."""
    reserve: bool = False
    """A reservation (`plan_reserve`): every layer advances by T from where
    it is, level or not."""
    first_written: npt.NDArray[np.int64] | None = None
    """For a reservation: the lowest position each sequence writes (where a
    copy-on-write is decided)."""
    prune: tuple[tuple[int, npt.NDArray[np.int64]], ...] = ()
    """(row, logical blocks) given back by pruning before the append."""


class SequenceTable:
    """Per-sequence block lists, per-layer lengths and slot mapping."""

    def __init__(
        self,
        allocator: BlockAllocator,
        geometry: CacheGeometry,
        prefix: PrefixCache | None = None,
        copy_blocks: BlockCopier | None = None,
        swap: SwapTier | None = None,
        window_tokens: int | None = None,
        sink_tokens: int | None = None,
        heavy_hitter_blocks: int | None = None,
        heavy_hitter_score: str = "mean",
    ) -> None:
        self.allocator = allocator
        self.heavy_hitter_score = heavy_hitter_score
        self.window_tokens = window_tokens or 0
        """Pruning: the recent tokens each sequence keeps (0: no pruning)."""
        self.heavy_hitter_blocks = heavy_hitter_blocks or 0
        """Heavy-hitter pruning: the block budget per sequence (0: the
        window cut instead, if any)."""
        self.block_mass = np.zeros(
            allocator.num_blocks if heavy_hitter_blocks else 0, np.float64
        )
        """Heavy-hitter pruning: attention mass accumulated per pool block
        since it was allocated."""
        self.block_queries = np.zeros_like(self.block_mass)
        """Heavy-hitter pruning: query rows that could see each block."""
        self.sink_blocks = -(-(sink_tokens or 0) // geometry.block_size)
        """Pruning: the leading blocks kept for the attention sinks."""
        self.blocks_pruned = 0
        """Blocks given back by pruning since creation."""
        self.swap = swap
        """The tier swapped-out sequences wait in, None without one."""
        # Row of a swapped-out sequence -> its tier slots, in block order.
        self._swapped: dict[int, IntArray] = {}
        self.geometry = geometry
        self.prefix = prefix
        """The prefix index, None when prefix caching is off."""
        self.copy_blocks = copy_blocks
        """How block contents are copied (copy-on-write, partial reuse)."""
        self.cow_copies = 0
        """Blocks copied because an append began in a shared block."""
        self._may_share = False  # no fork or match yet: skip the COW check
        self.block_size = geometry.block_size
        self.num_layers = geometry.num_layers
        self.max_seq_len = geometry.max_seq_len
        self._rows: dict[int, int] = {}
        self._batch_key = b""
        self._batch_rows: npt.NDArray[np.int64] = np.empty(0, np.int64)
        # The last commit of the cached batch, for the per-layer fast path.
        self._last_commit: AppendPlan | None = None
        self._last_blocks: IntArray = np.empty((0, 0), np.int32)
        self._last_slots: IntArray = np.empty(0, np.int32)
        self._free_rows: list[int] = []
        self._capacity = 0
        self._tables: IntArray = np.empty(
            (0, min(_INITIAL_COLUMNS, geometry.max_blocks_per_seq)), np.int32
        )
        self._written: IntArray = np.empty((0, self.num_layers), np.int32)
        self._lens: IntArray = np.empty(0, np.int32)
        self._num_blocks: IntArray = np.empty(0, np.int32)
        self._priority: IntArray = np.empty(0, np.int32)
        # Pruning: with the window cut the holes of a row are the logical
        # blocks [sink_blocks, hole_end) (none while hole_end <=
        # sink_blocks); heavy-hitter pruning leaves holes anywhere between
        # the sinks and the window (hole_end stays 0).
        self._hole_end: IntArray = np.empty(0, np.int32)
        # Row of a swapped-out sequence -> the logical blocks it held.
        self._swapped_columns: dict[int, npt.NDArray[np.int64]] = {}
        self._swapped_mass: dict[int, npt.NDArray[np.float64]] = {}
        # Prefix caching: token ids by position (-1 unknown), blocks hashed so
        # far and the chain hash of the last, per row.
        self._tokens: IntArray = np.empty(
            (0, _INITIAL_COLUMNS * self.block_size if prefix else 0), np.int32
        )
        self._hashed: IntArray = np.empty(0, np.int32)
        self._chain: dict[int, int] = {}
        self._grow_rows(_INITIAL_ROWS)

    # -- queries -------------------------------------------------------------

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def seq_ids(self) -> list[int]:
        return list(self._rows)

    def seq_len(self, seq_id: int) -> int:
        return int(self._lens[self._row(seq_id)])

    def layer_lens(self, seq_id: int) -> IntArray:
        """Tokens written to each layer of `seq_id` (a copy)."""
        return self._written[self._row(seq_id)].copy()

    def blocks_of(self, seq_id: int) -> IntArray:
        """The block ids of `seq_id` in logical order (a copy; -1 where
        pruning gave a block back)."""
        row = self._row(seq_id)
        return self._tables[row, : self._num_blocks[row]].copy()

    def tokens_stored(self) -> int:
        return int(self._lens.sum(dtype=np.int64))

    @property
    def pruning(self) -> bool:
        return bool(self.window_tokens)

    def pruned_range(self, seq_id: int) -> tuple[int, int]:
        """The token positions ``[begin, end)`` the window cut gave back
        (empty when ``begin >= end``; heavy-hitter holes: `pruned_blocks`)."""
        row = self._row(seq_id)
        b = self.block_size
        return self.sink_blocks * b, int(self._hole_end[row]) * b

    def pruned_blocks(self, seq_id: int) -> npt.NDArray[np.int64]:
        """The logical blocks of `seq_id` that pruning gave back."""
        row = self._row(seq_id)
        logical = -(-int(self._lens[row]) // self.block_size)
        kept = np.zeros(logical, bool)
        kept[self._kept_columns(row)] = True
        return np.flatnonzero(~kept)

    def tokens_pruned(self) -> int:
        """Tokens of the live sequences that pruning gave back."""
        if not self.pruning:
            return 0
        return (
            sum(self.pruned_blocks(seq_id).size for seq_id in self._rows)
            * self.block_size
        )

    def _kept_columns(self, row: int) -> npt.NDArray[np.int64]:
        """The logical blocks `row` holds (in the pool or the swap tier)."""
        if row in self._swapped_columns:
            return self._swapped_columns[row]
        blocks = self._tables[row, : self._num_blocks[row]]
        return np.flatnonzero(blocks != PAD_BLOCK)

    def _held(self, row: int) -> IntArray:
        """The blocks `row` holds, in logical order, holes left out."""
        blocks = self._tables[row, : self._num_blocks[row]]
        if self.pruning:
            return blocks[blocks != PAD_BLOCK]
        return blocks

    def add_block_mass(
        self,
        table: IntArray,
        lens: IntArray,
        mass: npt.NDArray[np.float32],
        query_rows: int,
        num_queries: int,
        causal: bool,
    ) -> None:
        """Credit each block of `table` ([batch, width], lengths `lens`) with
        the attention mass an attention call of `num_queries` queries of
        `query_rows` heads gave it (`mass` [batch, H, width]), and count the
        query rows that could see it (the later ones, when causal)."""
        if not self.heavy_hitter_blocks:
            return
        per_block = mass.sum(axis=1, dtype=np.float64)
        present = table >= 0
        np.add.at(self.block_mass, table[present], per_block[present])
        seen = np.full(table.shape, num_queries, np.int64)
        if causal:
            first_query = lens.astype(np.int64)[:, None] - num_queries
            block_start = np.arange(table.shape[1])[None, :] * self.block_size
            seen -= np.clip(block_start - first_query, 0, num_queries)
        np.add.at(self.block_queries, table[present], query_rows * seen[present])

    def heavy_hitter_scores(self, blocks: IntArray) -> npt.NDArray[np.float64]:
        """What keeps a block: its mass per query row that could see it
        ("mean", the default: old blocks are not favoured for having been
        seen longer) or its accumulated mass ("sum", H2O's own score)."""
        if self.heavy_hitter_score == "sum":
            return self.block_mass[blocks]
        return self.block_mass[blocks] / np.maximum(self.block_queries[blocks], 1.0)

    def block_table(self, seq_ids: npt.NDArray[np.int64]) -> tuple[IntArray, IntArray]:
        """(table int32 [batch, max_blocks] padded with -1, lens int32 [batch])
        where max_blocks is the most blocks any listed sequence holds."""
        if seq_ids.tobytes() == self._batch_key:
            rows = self._batch_rows
        else:
            rows = np.array([self._row(s) for s in seq_ids.tolist()], dtype=np.int64)
        if self._swapped:
            self._check_resident(seq_ids, rows)
        width = int(self._num_blocks[rows].max()) if rows.size else 0
        return self._tables[rows, :width].copy(), self._lens[rows].copy()

    def snapshot(self) -> tuple[Any, ...]:
        """The complete logical state, comparable with ``==`` (for tests)."""
        per_seq = tuple(
            (
                s,
                self._tables[r, : self._num_blocks[r]].tobytes(),
                self._written[r].tobytes(),
                int(self._lens[r]),
                int(self._priority[r]),
                self._tokens[r, : self._lens[r]].tobytes(),
                int(self._hashed[r]),
                self._chain.get(r),
                int(self._hole_end[r]),
            )
            for s, r in sorted(self._rows.items())
        )
        index = len(self.prefix) if self.prefix else 0
        swapped = tuple(
            (s, self._swapped[r].tobytes())
            for s, r in sorted(self._rows.items())
            if r in self._swapped
        )
        tier = self.swap.space.num_free if self.swap is not None else None
        return (
            per_seq,
            self.allocator.snapshot(),
            self.cow_copies,
            index,
            swapped,
            tier,
            self.blocks_pruned,
        )

    def priority(self, seq_id: int) -> int:
        return int(self._priority[self._row(seq_id)])

    def set_priority(self, seq_id: int, priority: int) -> None:
        """The retention priority its blocks get when it is freed (used by
        `PriorityEviction`)."""
        self._priority[self._row(seq_id)] = priority

    # -- append --------------------------------------------------------------

    def plan_reserve(
        self, ids: npt.NDArray[np.int64], num_tokens: int, require_level: bool = False
    ) -> AppendPlan:
        """Check a reservation of `num_tokens` slots in every layer of each of
        `ids` (`commit_reserve`) without changing anything.  Layer l of a
        sequence gets positions ``[written[l], written[l] + T)``, as `T`
        tokens appended to each layer in turn would; its length grows by T.
        `require_level`: refuse a sequence with a step half-appended, as an
        all-layers append does."""
        return self.plan_append(
            ids, num_tokens, None, reserve=True, require_level=require_level
        )

    def commit_reserve(self, plan: AppendPlan) -> IntArray:
        """Carry out a reservation: the slot of every layer's new tokens,
        int32 ``[L, batch, T]`` (a read-only broadcast when the layers are
        level, as they are in a decode step)."""
        first = plan.first_written
        if first is None or np.array_equal(first, plan.start):
            # Level: every layer writes the positions of the length.
            _, slots = self.commit_append(plan)
            flat = slots.reshape(plan.seq_ids.size, plan.num_tokens)
            return np.broadcast_to(flat, (self.num_layers, *flat.shape))
        rows = plan.rows
        known = rows >= 0
        before = np.zeros((rows.size, self.num_layers), np.int64)
        before[known] = self._written[rows[known]]
        self.commit_append(plan)
        rows = self._rows_of_batch(plan.seq_ids)
        b = self.block_size
        pos = before.T[:, :, None] + np.arange(plan.num_tokens)[None, None, :]
        blocks = self._tables[rows[None, :, None], pos // b]
        slots = (blocks * b + pos % b).astype(np.int32)
        slots.flags.writeable = False
        return slots

    def plan_append(
        self,
        ids: npt.NDArray[np.int64],
        num_tokens: int,
        layer: int | None,
        token_ids: npt.NDArray[np.int32] | None = None,
        *,
        reserve: bool = False,
        require_level: bool = False,
    ) -> AppendPlan:
        """Check an append of `num_tokens` tokens to each of `ids` (to
        `layer`, or to all layers when None) without changing anything."""
        rows = self._rows_of_batch(ids)
        if self._swapped:
            self._check_resident(ids, rows)
        if self.prefix is None:
            token_ids = None
        last = self._last_commit
        if (
            layer is not None
            and last is not None
            and last.rows is rows
            and last.num_tokens == num_tokens
        ):
            # Fast path of per-layer decode: layer l > 0 of a step writes the
            # positions layer 0 wrote a moment ago, into blocks that exist.
            start = self._written[rows, layer].astype(np.int64)
            if np.array_equal(start, last.start):
                return AppendPlan(
                    ids, rows, num_tokens, layer, start, 0, True, token_ids=token_ids
                )
        is_known = rows >= 0
        all_known = bool(is_known.all())
        krows = rows if all_known else rows[is_known]
        n = ids.size
        start = np.zeros(n, dtype=np.int64)
        old_len = np.zeros(n, dtype=np.int64)
        have = np.zeros(n, dtype=np.int64)
        if krows.size:
            lens = self._lens[krows]
            old_len[is_known] = lens
            have[is_known] = self._num_blocks[krows]
            if reserve and not require_level:
                start[is_known] = lens
            elif layer is None:  # all layers, or a whole-step reservation
                uneven = np.flatnonzero((self._written[krows] != lens[:, None]).any(1))
                if uneven.size:
                    i = int(np.flatnonzero(is_known)[uneven[0]])
                    raise SequenceError(
                        f"sequence {int(ids[i])} has a step half-appended (tokens "
                        f"per layer: {self._written[rows[i]].tolist()}); "
                        + (
                            "llm.reserve_slots reserves whole steps: finish it first"
                            if reserve
                            else "finish it with append_kv per layer before "
                            "appending all layers"
                        )
                    )
                start[is_known] = lens
            else:
                start[is_known] = self._written[krows, layer]
        end = start + num_tokens
        if n and int(end.max()) > self.max_seq_len:
            i = int(np.argmax(end > self.max_seq_len))
            raise SequenceTooLongError(
                f"sequence {int(ids[i])} would grow to {int(end[i])} tokens, "
                f"max_seq_len is {self.max_seq_len}"
            )
        new_len = np.maximum(old_len, end)
        needed = int(((new_len + self.block_size - 1) // self.block_size - have).sum())
        prune: tuple[tuple[int, npt.NDArray[np.int64]], ...] = ()
        freed = 0
        if self.window_tokens and krows.size:
            grow = (new_len + self.block_size - 1) // self.block_size - have
            prune, freed = self._plan_prune(krows, grow[is_known])
        first = start
        if reserve and krows.size:
            first = start.copy()
            first[is_known] = self._written[krows].min(axis=1)
        cow = self._copy_on_write(rows, first, is_known) if self._may_share else None
        if cow is not None:
            needed += int(cow.size)
        if needed > self.allocator.num_free + freed:
            pruning = f" (and {freed} that pruning gives back)" if freed else ""
            raise OutOfBlocksError(
                f"appending {num_tokens} token(s) to {n} sequence(s) needs "
                f"{needed} new blocks, only {self.allocator.num_free} of "
                f"{self.allocator.num_blocks} are free{pruning}"
            )
        return AppendPlan(
            ids,
            rows,
            num_tokens,
            layer,
            start,
            needed,
            False,
            cow,
            token_ids,
            reserve,
            first if reserve else None,
            prune,
        )

    def _plan_prune(
        self, rows: npt.NDArray[np.int64], grow: npt.NDArray[np.int64]
    ) -> tuple[tuple[tuple[int, npt.NDArray[np.int64]], ...], int]:
        """The blocks pruning gives back before an append that adds `grow`
        blocks to each of `rows`, and how many of them that frees for sure
        (those no other sequence holds)."""
        shortest = self._written[rows].min(axis=1).astype(np.int64)
        # Blocks wholly below the window of this step's first query.
        cut = np.maximum(
            self.sink_blocks, (shortest - self.window_tokens + 1) // self.block_size
        )
        prune: list[tuple[int, npt.NDArray[np.int64]]] = []
        if self.heavy_hitter_blocks:
            held = (self._tables[rows] != PAD_BLOCK).sum(axis=1)
            over = held + grow - self.heavy_hitter_blocks
            for i in np.flatnonzero(over > 0).tolist():
                row = int(rows[i])
                begin, end = self.sink_blocks, int(cut[i])
                blocks = self._tables[row, begin:end]
                candidates = begin + np.flatnonzero(blocks != PAD_BLOCK)
                if not candidates.size:
                    continue
                scores = self.heavy_hitter_scores(self._tables[row, candidates])
                # Least weighed first; the oldest first among equals.
                order = np.argsort(scores, kind="stable")[: int(over[i])]
                prune.append((row, np.sort(candidates[order])))
        else:
            begin = np.maximum(self._hole_end[rows], self.sink_blocks)
            for i in np.flatnonzero(cut > begin).tolist():
                prune.append(
                    (
                        int(rows[i]),
                        np.arange(int(begin[i]), int(cut[i]), dtype=np.int64),
                    )
                )
        freed = 0
        if prune:
            # A block goes back to the pool when every holder gives it up:
            # forked siblings pruning in one batch may release it together.
            given_back = np.concatenate(
                [self._tables[row, columns] for row, columns in prune]
            )
            blocks, releases = np.unique(given_back, return_counts=True)
            freed = int((self.allocator.ref_counts_of(blocks) <= releases).sum())
        return tuple(prune), freed

    def _prune(self, prune: tuple[tuple[int, npt.NDArray[np.int64]], ...]) -> None:
        """Give back the listed logical blocks of each row."""
        for row, columns in prune:
            blocks = self._tables[row, columns]
            # Oldest first: the front of the window is the least likely to
            # be matched again.
            self.allocator.release(blocks, priority=int(self._priority[row]))
            self.blocks_pruned += int(blocks.size)
            self._tables[row, columns] = PAD_BLOCK
            if not self.heavy_hitter_blocks:
                self._hole_end[row] = int(columns[-1]) + 1

    def _copy_on_write(
        self,
        rows: npt.NDArray[np.int64],
        start: npt.NDArray[np.int64],
        is_known: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.int64] | None:
        """Batch indices whose write begins inside a block another sequence
        holds too.  When every holder of a block writes into it in this one
        batch, the last of them keeps it: k holders, k - 1 copies."""
        inside = is_known & (start % self.block_size != 0)
        if not inside.any():
            return None
        index = np.flatnonzero(inside)
        blocks = self._tables[rows[index], start[index] // self.block_size]
        refs = self.allocator.ref_counts_of(blocks)
        shared = refs > 1
        if not shared.any():
            return None
        index, blocks, refs = index[shared], blocks[shared], refs[shared]
        # The last batch entry writing each block, and how many write it.
        reversed_first = np.unique(blocks[::-1], return_index=True)[1]
        last = blocks.size - 1 - reversed_first
        writers = np.bincount(np.searchsorted(np.unique(blocks), blocks))
        keeps = last[writers == refs[last]]
        copy = np.ones(index.size, bool)
        copy[keeps] = False
        return index[copy] if copy.any() else None

    def commit_append(self, plan: AppendPlan) -> tuple[IntArray, IntArray]:
        """Carry out a plan: allocate blocks, advance lengths.  Returns the
        physical block of every new token, int32 ``[batch, T]``, and the slot
        mapping, int32 ``[batch * T]`` with ``slot = block * block_size +
        offset``, in batch-major token order."""
        rows = plan.rows
        if plan.fill_in and self._last_commit is not None:
            self._written[rows, plan.layer] = plan.start + plan.num_tokens
            if self.prefix is not None:
                self._record_tokens(rows, plan.start, plan.token_ids)
                self._register_full_blocks(rows)
            return self._last_blocks.copy(), self._last_slots
        if plan.prune:
            self._prune(plan.prune)
        if (rows < 0).any():
            rows = rows.copy()
            for i in np.flatnonzero(rows < 0).tolist():
                rows[i] = self._new_row(int(plan.seq_ids[i]))
        B = self.block_size
        T = plan.num_tokens
        start = plan.start
        end = start + T
        old_len = self._lens[rows].astype(np.int64)
        new_len = np.maximum(old_len, end)
        have = self._num_blocks[rows].astype(np.int64)
        want = (new_len + B - 1) // B

        if plan.blocks_needed:
            self._grow_columns(int(want.max()))
            new_ids = self.allocator.allocate(plan.blocks_needed)
            if self.heavy_hitter_blocks:
                self.block_mass[new_ids] = 0.0
                self.block_queries[new_ids] = 0.0
            if plan.copy_on_write is not None:
                cow = plan.copy_on_write
                first = start if plan.first_written is None else plan.first_written
                new_ids = self._copy_shared(rows[cow], first[cow], new_ids)
            count = want - have
            if new_ids.size:
                owner = np.repeat(rows, count)
                # Column of each new block: the owner's old block count plus
                # its rank among the owner's new blocks.
                first = np.cumsum(count) - count
                rank = np.arange(new_ids.size) - np.repeat(first, count)
                self._tables[owner, np.repeat(have, count) + rank] = new_ids
                self._num_blocks[rows] = want

        if plan.reserve:
            self._written[rows] += np.int32(T)
        elif plan.layer is None:
            self._written[rows] = end[:, None]
        else:
            self._written[rows, plan.layer] = end
        self._lens[rows] = new_len

        pos = start[:, None] + np.arange(T)[None, :]
        logical = pos // B
        blocks = self._tables[rows[:, None], logical]
        slots = blocks * B + (pos % B).astype(np.int32)

        # Blocks reached by the grown length: num_filled is a function of the
        # block's logical index only, so duplicate indices carry equal values.
        grew = pos >= old_len[:, None]
        if grew.any():
            filled = np.minimum(B, new_len[:, None] - logical * B)
            self.allocator.set_num_filled(blocks[grew], filled[grew])
        slot_mapping = slots.ravel()
        if self.prefix is not None:
            self._record_tokens(rows, start, plan.token_ids)
            self._register_full_blocks(rows)
        if rows is self._batch_rows and not plan.reserve:
            self._last_commit = plan
            self._last_blocks, self._last_slots = blocks.copy(), slot_mapping
        return blocks, slot_mapping

    def _copy_shared(
        self,
        rows: npt.NDArray[np.int64],
        start: npt.NDArray[np.int64],
        new_ids: IntArray,
    ) -> IntArray:
        """Give each row its own copy of the shared block its write begins
        in; returns the new ids left for growth."""
        n = rows.size
        copies, rest = new_ids[:n], new_ids[n:]
        column = start // self.block_size
        shared = self._tables[rows, column].astype(np.int32)
        assert self.copy_blocks is not None, "copy-on-write needs a block copier"
        self.copy_blocks(shared, copies, None)
        self.allocator.set_num_filled(copies, self.allocator.num_filled_of(shared))
        self._tables[rows, column] = copies
        self.allocator.release(shared)
        self.cow_copies += n
        return rest

    # -- prefix caching --------------------------------------------------------

    def _record_tokens(
        self,
        rows: npt.NDArray[np.int64],
        start: npt.NDArray[np.int64],
        token_ids: npt.NDArray[np.int32] | None,
    ) -> None:
        if token_ids is None:
            return
        positions = start[:, None] + np.arange(token_ids.shape[1])[None, :]
        self._grow_token_columns(int(positions.max()) + 1)
        self._tokens[rows[:, None], positions] = token_ids

    def _register_full_blocks(self, rows: npt.NDArray[np.int64]) -> None:
        """Hash the blocks that became full in every layer, in order, while
        their tokens are known."""
        assert self.prefix is not None
        complete = self._written[rows].min(axis=1) // self.block_size
        pending = np.flatnonzero(complete > self._hashed[rows])
        b = self.block_size
        for i in pending.tolist():
            row = int(rows[i])
            parent = self._chain.get(row, ROOT_HASH)
            for j in range(int(self._hashed[row]), int(complete[i])):
                tokens = self._tokens[row, j * b : (j + 1) * b]
                block = int(self._tables[row, j])
                if tokens.size < b or (tokens < 0).any() or block == PAD_BLOCK:
                    # Unknown tokens break the chain: nothing after them can
                    # be matched either.
                    self._hashed[row] = np.iinfo(np.int32).max
                    break
                parent = self.prefix.register(block, parent, tokens)
                self._hashed[row] = j + 1
                self._chain[row] = parent

    def match_prefixes(
        self, ids: npt.NDArray[np.int64], prompts: IntArray, lens: IntArray
    ) -> IntArray:
        """`match_prefix` for each new sequence ``ids[i]`` and its prompt
        ``prompts[i, :lens[i]]``, in order; all ids are checked first."""
        id_list: list[int] = ids.tolist()
        check_unique(id_list)
        for seq_id in id_list:
            if seq_id in self._rows:
                raise SequenceError(
                    f"cannot match a prefix into sequence {seq_id}: it exists "
                    "(matching starts a new sequence)"
                )
        return np.array(
            [
                self.match_prefix(seq_id, prompts[i, : int(lens[i])])
                for i, seq_id in enumerate(id_list)
            ],
            dtype=np.int32,
        )

    def match_prefix(self, seq_id: int, tokens: npt.NDArray[np.int32]) -> int:
        """Start sequence `seq_id` with the longest cached prefix of `tokens`
        (whole blocks attached, then the first tokens of one more cached block
        copied into a fresh block); returns how many tokens it now holds,
        leaving at least the last token to compute."""
        assert self.prefix is not None, "prefix caching is off"
        if seq_id in self._rows:
            raise SequenceError(
                f"cannot match a prefix into sequence {seq_id}: it exists "
                "(matching starts a new sequence)"
            )
        limit = min(int(tokens.size) - 1, self.max_seq_len)
        found = self.prefix.match(tokens, limit)
        stats = self.prefix.stats
        stats.queries += 1
        stats.query_tokens += int(tokens.size)
        row = self._new_row(seq_id)
        blocks = list(found.blocks)
        matched = np.array(blocks, np.int32)
        # A block nobody held keeps an earlier owner's attention mass: start
        # it afresh.  One that live sequences still hold keeps theirs.
        unheld = matched[self.allocator.ref_counts_of(matched) == 0]
        self.allocator.take_back(matched)
        if self.heavy_hitter_blocks:
            self.block_mass[unheld] = 0.0
            self.block_queries[unheld] = 0.0
        partial = 0
        if found.partial_block is not None and found.partial_tokens:
            copied = self._copy_partial(found.partial_block, found.partial_tokens)
            if copied is not None:
                blocks.append(copied)
                partial = found.partial_tokens
        total = len(found.blocks) * self.block_size + partial
        self._grow_columns(len(blocks))
        self._tables[row, : len(blocks)] = blocks
        self._num_blocks[row] = len(blocks)
        self._written[row] = total
        self._lens[row] = total
        self._grow_token_columns(total)
        self._tokens[row, :total] = tokens[:total]
        self._hashed[row] = len(found.blocks)
        if found.hashes:
            self._chain[row] = found.hashes[-1]
        stats.hit_tokens += total
        stats.partial_hit_tokens += partial
        self._may_share = True
        return total

    def _copy_partial(self, source: int, tokens: int) -> int | None:
        """A fresh block holding the first `tokens` slots of `source`, or
        None when no block can be had."""
        if self.allocator.num_free - (self.allocator.ref_count(source) == 0) < 1:
            return None
        allocator = self.allocator
        # A cached-free source stays where it is in the eviction order unless
        # the allocation below must evict, which might take the source
        # itself: then it is held meanwhile and handed back with its
        # retention priority (where the policy keeps one).
        cached = (
            allocator.ref_count(source) == 0
            and allocator.num_free == allocator.num_cached
        )
        priority = allocator.priority_of(source) if cached else 0
        if cached:
            allocator.revive(source)
        (fresh,) = allocator.allocate(1).tolist()
        if self.heavy_hitter_blocks:
            self.block_mass[fresh] = 0.0
            self.block_queries[fresh] = 0.0
        assert self.copy_blocks is not None, "partial reuse needs a block copier"
        src = np.array([source], np.int32)
        dst = np.array([fresh], np.int32)
        self.copy_blocks(src, dst, tokens)
        self.allocator.set_num_filled(dst, np.array([tokens], np.int32))
        if cached:
            allocator.release(src, priority=priority)
        return fresh

    # -- fork ----------------------------------------------------------------

    def fork(
        self, parents: npt.NDArray[np.int64], children: npt.NDArray[np.int64]
    ) -> None:
        """Give each child its parent's blocks, lengths and tokens; nothing is
        copied until one of them appends into a shared, partly filled block.
        All checks first: every parent exists with its layers level, every
        child is new, no id twice."""
        parent_list: list[int] = parents.tolist()
        child_list: list[int] = children.tolist()
        check_unique(child_list)
        for parent, child in zip(parent_list, child_list, strict=True):
            row = self._row(parent)
            if row in self._swapped:
                raise SequenceSwappedError(
                    f"sequence {parent} is swapped out: swap it in before forking"
                )
            if child in self._rows:
                raise SequenceError(f"cannot fork into sequence {child}: it exists")
            if child in parent_list:
                raise SequenceError(f"sequence {child} is both a parent and a child")
            written = self._written[row]
            if (written != self._lens[row]).any():
                raise SequenceError(
                    f"sequence {parent} has a step half-appended (tokens per layer: "
                    f"{written.tolist()}); finish it before forking"
                )
        for parent, child in zip(parent_list, child_list, strict=True):
            source = self._rows[parent]
            row = self._new_row(child)
            n = int(self._num_blocks[source])
            self._tables[row, :n] = self._tables[source, :n]
            self._num_blocks[row] = n
            self._written[row] = self._written[source]
            self._lens[row] = self._lens[source]
            self._priority[row] = self._priority[source]
            self._hole_end[row] = self._hole_end[source]
            self._tokens[row] = self._tokens[source]
            self._hashed[row] = self._hashed[source]
            if source in self._chain:
                self._chain[row] = self._chain[source]
            self.allocator.share(self._held(row))
        self._may_share = True

    # -- free ----------------------------------------------------------------

    def free_sequences(
        self, ids: npt.NDArray[np.int64], priority: int | None = None
    ) -> None:
        """Release every listed sequence's blocks and forget it; all of them
        or (on an unknown id) none.  Cached blocks keep `priority` for
        eviction (default: each sequence's own, see `set_priority`)."""
        id_list: list[int] = ids.tolist()
        check_unique(id_list)
        rows = [self._row(s) for s in id_list]
        if not rows:
            return
        for row in rows:
            slots = self._swapped.pop(row, None)
            self._swapped_columns.pop(row, None)
            self._swapped_mass.pop(row, None)
            if slots is not None:
                assert self.swap is not None
                self.swap.space.release(slots)
                continue
            # Tail first: the end of a sequence is the least likely to be
            # shared again, so it is evicted first.
            held = self._held(row)[::-1]
            keep = int(self._priority[row]) if priority is None else priority
            self.allocator.release(held, priority=keep)
        for seq_id, row in zip(ids.tolist(), rows, strict=True):
            self._clear_row(row, int(self._num_blocks[row]))
            del self._rows[seq_id]
            self._free_rows.append(row)
        self._forget_batch()

    def reset(self) -> None:
        self.allocator.reset()
        self._swapped.clear()
        self._swapped_columns.clear()
        self._swapped_mass.clear()
        self.block_mass.fill(0.0)
        self.block_queries.fill(0.0)
        if self.swap is not None:
            self.swap.space.reset()
        if self.prefix is not None:
            self.prefix.clear()
        self._tables.fill(PAD_BLOCK)
        self._written.fill(0)
        self._lens.fill(0)
        self._num_blocks.fill(0)
        self._priority.fill(0)
        self._hole_end.fill(0)
        self._tokens.fill(-1)
        self._hashed.fill(0)
        self._chain.clear()
        self._rows.clear()
        self._forget_batch()
        self._free_rows = list(range(self._capacity - 1, -1, -1))

    def check_invariants(self) -> None:
        """Assert that the tables and the allocator agree (for tests): each
        block's ref count is the number of tables holding it, every held
        block is in use and records the tokens its sequences' lengths put
        in it, and the prefix index matches the allocator's hashes."""
        self.allocator.check_invariants()
        held = np.zeros(self.allocator.num_blocks, np.int64)
        filled = np.zeros(self.allocator.num_blocks, np.int64)
        b = self.block_size
        swapped_slots = 0
        for row in self._rows.values():
            n = int(self._num_blocks[row])
            length = int(self._lens[row])
            logical = (length + b - 1) // b
            hole = np.ones(logical, bool)
            hole[self._kept_columns(row)] = False
            if self.window_tokens:
                # Holes only between the sinks and the cut of the window.
                shortest = int(self._written[row].min())
                cut = max(self.sink_blocks, (shortest - self.window_tokens + 1) // b)
                columns = np.flatnonzero(hole)
                assert not columns.size or (
                    columns.min() >= self.sink_blocks and columns.max() < cut
                ), "pruned into the sinks or the window"
                if not self.heavy_hitter_blocks:
                    window_cut = np.zeros(logical, bool)
                    window_cut[self.sink_blocks : int(self._hole_end[row])] = True
                    assert (hole == window_cut).all(), "holes are not the window cut"
            else:
                assert not hole.any(), "holes without pruning"
            if row in self._swapped:
                assert n == 0, "a swapped-out sequence holds pool blocks"
                slots = self._swapped[row]
                assert slots.size == logical - int(hole.sum()), "swap slots disagree"
                swapped_slots += slots.size
                continue
            assert n == logical, "block count disagrees with length"
            assert (self._tables[row, n:] == PAD_BLOCK).all(), "stale table entry"
            blocks = self._tables[row, :n]
            np.add.at(held, blocks[~hole], 1)
            fill = np.minimum(b, length - np.arange(n) * b)
            np.maximum.at(filled, blocks[~hole], fill[~hole])
        refs = self.allocator.ref_counts()
        assert (held == refs).all(), (
            f"ref counts {refs.tolist()} differ from table holders {held.tolist()}"
        )
        used = refs > 0
        have = np.array([self.allocator.num_filled(i) for i in range(refs.size)])
        assert (have[used] == filled[used]).all(), "num_filled disagrees"
        if self.prefix is not None:
            self.prefix.check_invariants()
        if self.swap is not None:
            assert self.swap.space.num_used == swapped_slots, "tier slots leaked"

    # -- swapping ----------------------------------------------------------------

    def is_swapped(self, seq_id: int) -> bool:
        return self._row(seq_id) in self._swapped

    @property
    def num_swapped(self) -> int:
        return len(self._swapped)

    def _check_resident(
        self, ids: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]
    ) -> None:
        for seq_id, row in zip(ids.tolist(), rows.tolist(), strict=True):
            if row in self._swapped:
                raise SequenceSwappedError(
                    f"sequence {seq_id} is swapped out: swap_in it before using it"
                )

    def _swap_rows(
        self, ids: npt.NDArray[np.int64], *, swapped: bool
    ) -> tuple[SwapTier, list[int]]:
        """The tier and the rows of `ids`, each checked to be (`swapped`) or
        not be swapped out already."""
        if self.swap is None:
            raise SequenceError(
                "this cache has no swap space: create it with swap_blocks > 0"
            )
        id_list: list[int] = ids.tolist()
        check_unique(id_list)
        rows = [self._row(s) for s in id_list]
        for seq_id, row in zip(id_list, rows, strict=True):
            if swapped and row not in self._swapped:
                raise SequenceError(f"sequence {seq_id} is not swapped out")
            if not swapped and row in self._swapped:
                raise SequenceSwappedError(f"sequence {seq_id} is already swapped out")
        return self.swap, rows

    def swap_out(self, ids: npt.NDArray[np.int64]) -> int:
        """Move every block of the listed sequences (all layers) to the swap
        tier and give the pool blocks back (a block another sequence still
        holds stays in the pool for it: this sequence's copy goes to the
        tier).  All or nothing; returns the blocks moved."""
        swap, rows = self._swap_rows(ids, swapped=False)
        held = [self._held(r) for r in rows]
        slots = swap.space.allocate(sum(h.size for h in held))  # all or nothing
        blocks = np.concatenate(held) if rows else np.empty(0, np.int32)
        if blocks.size:
            swap.write_out(blocks, swap.space.blocks, slots)
        start = 0
        for row, mine in zip(rows, held, strict=True):
            n = int(mine.size)
            self._swapped_columns[row] = self._kept_columns(row)
            if self.heavy_hitter_blocks:
                self._swapped_mass[row] = np.stack(
                    [self.block_mass[mine], self.block_queries[mine]]
                )
            self.allocator.release(mine[::-1], priority=int(self._priority[row]))
            self._tables[row, : self._num_blocks[row]] = PAD_BLOCK
            self._num_blocks[row] = 0
            self._swapped[row] = slots[start : start + n].copy()
            start += n
        self._forget_batch()
        swap.swaps_out += len(rows)
        swap.bytes_moved += int(blocks.size) * swap.space.slot_bytes
        return int(blocks.size)

    def swap_in(self, ids: npt.NDArray[np.int64]) -> int:
        """Bring the listed swapped-out sequences back into free pool blocks
        (any ids; tables rewritten), bit for bit.  All or nothing: without
        enough free blocks nothing moves.  Returns the blocks moved."""
        swap, rows = self._swap_rows(ids, swapped=True)
        slots_per_row = [self._swapped[r] for r in rows]
        need = sum(int(s.size) for s in slots_per_row)
        if need > self.allocator.num_free:
            raise OutOfBlocksError(
                f"swapping in {len(rows)} sequence(s) needs {need} blocks, only "
                f"{self.allocator.num_free} of {self.allocator.num_blocks} are free"
            )
        blocks = self.allocator.allocate(need)
        if need:
            slots = np.concatenate(slots_per_row)
            swap.read_in(swap.space.blocks, slots, blocks)
            swap.space.release(slots)
        start = 0
        b = self.block_size
        for row, row_slots in zip(rows, slots_per_row, strict=True):
            n = int(row_slots.size)
            logical = -(-int(self._lens[row]) // b)
            self._grow_columns(logical)
            mine = blocks[start : start + n]
            # The kept blocks go back where they were; holes stay holes.
            columns = self._swapped_columns.pop(row)
            self._tables[row, columns] = mine
            if self.heavy_hitter_blocks:
                self.block_mass[mine], self.block_queries[mine] = (
                    self._swapped_mass.pop(row)
                )
            self._num_blocks[row] = logical
            fill = np.minimum(b, int(self._lens[row]) - columns * b)
            self.allocator.set_num_filled(mine, fill.astype(np.int32))
            del self._swapped[row]
            start += n
        self._forget_batch()
        swap.swaps_in += len(rows)
        swap.bytes_moved += need * swap.space.slot_bytes
        return need

    # -- rows ----------------------------------------------------------------

    def _rows_of_batch(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Row of every id (-1 for unknown ids); raises on repeated ids.

        Decode calls append the same batch again and again (once per layer,
        once per step), so the rows of the last fully known batch are kept
        and reused while no sequence is added or removed: one bytes
        comparison instead of a dict lookup per sequence.
        """
        key = ids.tobytes()
        if key == self._batch_key:
            return self._batch_rows
        id_list: list[int] = ids.tolist()
        check_unique(id_list)
        get = self._rows.get
        rows = np.fromiter((get(s, -1) for s in id_list), np.int64, len(id_list))
        if rows.size and rows.min() >= 0:
            self._batch_key, self._batch_rows = key, rows
        return rows

    def _forget_batch(self) -> None:
        self._batch_key = b""
        self._batch_rows = np.empty(0, np.int64)
        self._last_commit = None

    def _row(self, seq_id: Any) -> int:
        try:
            return self._rows[seq_id]
        except (KeyError, TypeError):
            raise UnknownSequenceError(f"unknown sequence id {seq_id!r}") from None

    def _new_row(self, seq_id: int) -> int:
        self._forget_batch()
        if not self._free_rows:
            self._grow_rows(max(_INITIAL_ROWS, 2 * self._capacity))
        row = self._free_rows.pop()
        self._rows[seq_id] = row
        return row

    def _clear_row(self, row: int, num_blocks: int) -> None:
        self._tables[row, :num_blocks] = PAD_BLOCK
        self._written[row] = 0
        self._lens[row] = 0
        self._num_blocks[row] = 0
        self._priority[row] = 0
        self._hole_end[row] = 0
        self._tokens[row] = -1
        self._hashed[row] = 0
        self._chain.pop(row, None)

    def _grow_columns(self, width: int) -> None:
        """Make the tables at least `width` blocks wide (doubling, capped at
        the blocks of a `max_seq_len` sequence)."""
        have = self._tables.shape[1]
        if width <= have:
            return
        wide = min(max(width, 2 * have), self.geometry.max_blocks_per_seq)
        tables = np.full((self._capacity, wide), PAD_BLOCK, np.int32)
        tables[:, :have] = self._tables
        self._tables = tables

    def _grow_token_columns(self, width: int) -> None:
        have = self._tokens.shape[1]
        if width <= have:
            return
        cap = self.geometry.max_blocks_per_seq * self.block_size
        wide = min(max(width, 2 * have), cap)
        tokens = np.full((self._capacity, wide), -1, np.int32)
        tokens[:, :have] = self._tokens
        self._tokens = tokens

    def _grow_rows(self, capacity: int) -> None:
        old = self._capacity
        tables = np.full((capacity, self._tables.shape[1]), PAD_BLOCK, np.int32)
        tables[:old] = self._tables
        written = np.zeros((capacity, self.num_layers), np.int32)
        written[:old] = self._written
        lens = np.zeros(capacity, np.int32)
        lens[:old] = self._lens
        nblocks = np.zeros(capacity, np.int32)
        nblocks[:old] = self._num_blocks
        self._tables, self._written, self._lens, self._num_blocks = (
            tables,
            written,
            lens,
            nblocks,
        )
        self._priority = np.concatenate(
            [self._priority, np.zeros(capacity - old, np.int32)]
        )
        self._hashed = np.concatenate(
            [self._hashed, np.zeros(capacity - old, np.int32)]
        )
        self._hole_end = np.concatenate(
            [self._hole_end, np.zeros(capacity - old, np.int32)]
        )
        tokens = np.full((capacity, self._tokens.shape[1]), -1, np.int32)
        tokens[:old] = self._tokens
        self._tokens = tokens
        # Pop from the end: lowest new row first.
        self._free_rows.extend(range(capacity - 1, old - 1, -1))
        self._capacity = capacity
