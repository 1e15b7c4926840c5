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

Not thread-safe by itself: `PagedKVCache` holds its lock around every plan
and commit.  Sequence ids reach this class already checked
(`llmir.runtime.validation.check_seq_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import (
    OutOfBlocksError,
    SequenceError,
    SequenceTooLongError,
    UnknownSequenceError,
)
from llmir.runtime.allocator import BlockAllocator
from llmir.runtime.geometry import PAD_BLOCK, CacheGeometry
from llmir.runtime.validation import check_unique

IntArray = npt.NDArray[np.int32]

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


class SequenceTable:
    """Per-sequence block lists, per-layer lengths and slot mapping."""

    def __init__(self, allocator: BlockAllocator, geometry: CacheGeometry) -> None:
        self.allocator = allocator
        self.geometry = geometry
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
        """The block ids of `seq_id` in logical order (a copy)."""
        row = self._row(seq_id)
        return self._tables[row, : self._num_blocks[row]].copy()

    def tokens_stored(self) -> int:
        return int(self._lens.sum(dtype=np.int64))

    def block_table(self, seq_ids: npt.NDArray[np.int64]) -> tuple[IntArray, IntArray]:
        """(table int32 [batch, max_blocks] padded with -1, lens int32 [batch])
        where max_blocks is the most blocks any listed sequence holds."""
        if seq_ids.tobytes() == self._batch_key:
            rows = self._batch_rows
        else:
            rows = np.array([self._row(s) for s in seq_ids.tolist()], dtype=np.int64)
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
            )
            for s, r in sorted(self._rows.items())
        )
        return (per_seq, self.allocator.snapshot())

    # -- append --------------------------------------------------------------

    def plan_append(
        self, ids: npt.NDArray[np.int64], num_tokens: int, layer: int | None
    ) -> AppendPlan:
        """Check an append of `num_tokens` tokens to each of `ids` (to
        `layer`, or to all layers when None) without changing anything."""
        rows = self._rows_of_batch(ids)
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
                return AppendPlan(ids, rows, num_tokens, layer, start, 0, True)
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
            if layer is None:
                uneven = np.flatnonzero((self._written[krows] != lens[:, None]).any(1))
                if uneven.size:
                    i = int(np.flatnonzero(is_known)[uneven[0]])
                    raise SequenceError(
                        f"sequence {int(ids[i])} has a step half-appended (tokens "
                        f"per layer: {self._written[rows[i]].tolist()}); finish "
                        "it with append_kv per layer before appending all layers"
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
        if needed > self.allocator.num_free:
            raise OutOfBlocksError(
                f"appending {num_tokens} token(s) to {n} sequence(s) needs "
                f"{needed} new blocks, only {self.allocator.num_free} of "
                f"{self.allocator.num_blocks} are free"
            )
        return AppendPlan(ids, rows, num_tokens, layer, start, needed)

    def commit_append(self, plan: AppendPlan) -> tuple[IntArray, IntArray]:
        """Carry out a plan: allocate blocks, advance lengths.  Returns the
        physical block of every new token, int32 ``[batch, T]``, and the slot
        mapping, int32 ``[batch * T]`` with ``slot = block * block_size +
        offset``, in batch-major token order."""
        rows = plan.rows
        if plan.fill_in and self._last_commit is not None:
            self._written[rows, plan.layer] = plan.start + plan.num_tokens
            return self._last_blocks.copy(), self._last_slots
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
            count = want - have
            owner = np.repeat(rows, count)
            # Column of each new block: the owner's old block count plus its
            # rank among the owner's new blocks.
            first = np.cumsum(count) - count
            rank = np.arange(plan.blocks_needed) - np.repeat(first, count)
            self._tables[owner, np.repeat(have, count) + rank] = new_ids
            self._num_blocks[rows] = want

        if plan.layer is None:
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
        if rows is self._batch_rows:
            self._last_commit = plan
            self._last_blocks, self._last_slots = blocks.copy(), slot_mapping
        return blocks, slot_mapping

    # -- free ----------------------------------------------------------------

    def free_sequences(self, ids: npt.NDArray[np.int64]) -> None:
        """Release every listed sequence's blocks and forget it; all of them
        or (on an unknown id) none."""
        id_list: list[int] = ids.tolist()
        check_unique(id_list)
        rows = [self._row(s) for s in id_list]
        if not rows:
            return
        held = [self._tables[r, : self._num_blocks[r]] for r in rows]
        self.allocator.release(np.concatenate(held))
        for seq_id, row in zip(ids.tolist(), rows, strict=True):
            self._clear_row(row, int(self._num_blocks[row]))
            del self._rows[seq_id]
            self._free_rows.append(row)
        self._forget_batch()

    def reset(self) -> None:
        self.allocator.reset()
        self._tables.fill(PAD_BLOCK)
        self._written.fill(0)
        self._lens.fill(0)
        self._num_blocks.fill(0)
        self._rows.clear()
        self._forget_batch()
        self._free_rows = list(range(self._capacity - 1, -1, -1))

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
        # Pop from the end: lowest new row first.
        self._free_rows.extend(range(capacity - 1, old - 1, -1))
        self._capacity = capacity
