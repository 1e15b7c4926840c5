"""Checks of block tables, sequence lengths and layer indices handed to kernels.

Shared by the cache's `lookup_kv`, the attention kernels and the GPU backend:
a table that passes `validate_block_table` can be indexed by any kernel
without bounds checks.  The rules are those of `llmir.runtime.layout`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import BlockTableError, DTypeError, ShapeError
from llmir.runtime.layout import PAD_BLOCK

IntArray = npt.NDArray[np.int32]


def check_layer(layer: object, num_layers: int, owner: str = "cache") -> None:
    """`layer` must be an integer (not a bool) in ``[0, num_layers)``."""
    if (
        isinstance(layer, bool)
        or not isinstance(layer, int | np.integer)
        or not 0 <= layer < num_layers
    ):
        raise ShapeError(
            f"layer {layer!r} is out of range, the {owner} has {num_layers} layers"
        )


def validate_block_table(
    block_table: Any,
    seq_lens: Any,
    *,
    block_size: int,
    num_blocks: int,
    max_seq_len: int,
) -> tuple[IntArray, IntArray]:
    """Check a block table against a pool and return it, with `seq_lens`, as
    C-contiguous int32 arrays (no copy when they already are).

    Accepted: `block_table` an integer array ``[batch, max_blocks]``,
    `seq_lens` an integer array ``[batch]``, with for every row ``b``:

      * ``0 <= seq_lens[b] <= min(max_seq_len, max_blocks * block_size)``;
      * the first ``ceil(seq_lens[b] / block_size)`` entries are block ids in
        ``[0, num_blocks)``;
      * entries past those are ``-1`` (padding) or block ids in range (a
        table cut from a longer sequence is fine: kernels never read them).

    Raises DTypeError for non-integer arrays, ShapeError for wrong ranks or
    mismatched batch sizes, BlockTableError for everything else, naming the
    row, the column and the bad value.
    """
    table = np.asarray(block_table)
    lens = np.asarray(seq_lens)
    for name, arr in (("block_table", table), ("seq_lens", lens)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise DTypeError(
                f"{name} must hold integers (int32), got dtype {arr.dtype}"
            )
    if table.ndim != 2:
        raise ShapeError(
            f"block_table must be 2-D [batch, max_blocks], got shape {table.shape}"
        )
    if lens.ndim != 1:
        raise ShapeError(f"seq_lens must be 1-D [batch], got shape {lens.shape}")
    if lens.shape[0] != table.shape[0]:
        raise ShapeError(
            f"block_table has {table.shape[0]} rows but seq_lens has "
            f"{lens.shape[0]} entries"
        )
    if table.size and (
        table.min() < np.iinfo(np.int32).min or table.max() > np.iinfo(np.int32).max
    ):
        raise BlockTableError("block_table values do not fit in int32")
    if lens.size == 0:
        return (
            np.ascontiguousarray(table, dtype=np.int32),
            np.ascontiguousarray(lens, dtype=np.int32),
        )

    negative = np.flatnonzero(lens < 0)
    if negative.size:
        b = int(negative[0])
        raise BlockTableError(f"seq_lens[{b}] = {int(lens[b])} is negative")
    too_long = np.flatnonzero(lens > max_seq_len)
    if too_long.size:
        b = int(too_long[0])
        raise BlockTableError(
            f"seq_lens[{b}] = {int(lens[b])} exceeds max_seq_len {max_seq_len}"
        )
    capacity = table.shape[1] * block_size
    uncovered = np.flatnonzero(lens > capacity)
    if uncovered.size:
        b = int(uncovered[0])
        raise BlockTableError(
            f"seq_lens[{b}] = {int(lens[b])} but block_table covers only "
            f"{capacity} tokens ({table.shape[1]} blocks of {block_size})"
        )

    blocks_needed = (lens.astype(np.int64) + block_size - 1) // block_size
    live = np.arange(table.shape[1])[None, :] < blocks_needed[:, None]
    in_range = (table >= 0) & (table < num_blocks)
    bad_live = np.argwhere(live & ~in_range)
    if bad_live.size:
        b, j = (int(v) for v in bad_live[0])
        value = int(table[b, j])
        what = (
            "padding (-1)"
            if value == PAD_BLOCK
            else f"out of range, the pool has {num_blocks} blocks"
        )
        raise BlockTableError(
            f"block_table[{b}, {j}] = {value} is {what}, but seq_lens[{b}] = "
            f"{int(lens[b])} needs {int(blocks_needed[b])} blocks"
        )
    bad_pad = np.argwhere(~live & ~in_range & (table != PAD_BLOCK))
    if bad_pad.size:
        b, j = (int(v) for v in bad_pad[0])
        raise BlockTableError(
            f"block_table[{b}, {j}] = {int(table[b, j])} is neither a block id in "
            f"[0, {num_blocks}) nor the padding value {PAD_BLOCK}"
        )
    return (
        np.ascontiguousarray(table, dtype=np.int32),
        np.ascontiguousarray(lens, dtype=np.int32),
    )
