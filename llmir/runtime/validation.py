"""Checks of everything a caller hands the cache, run once at the
`PagedKVCache` boundary.

Each check returns a *validated* value (`BlockTable`, `AttentionOptions`, an
int32 id array, a layer index) that backends take as it is: a kernel given a
`BlockTable` indexes the pool without bounds checks, and no backend checks
again.  Errors derive from `llmir.errors.LLMIRError` and name the bad value
and the limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit, prange  # pyright: ignore[reportUnknownVariableType]

from llmir.errors import (
    BlockTableError,
    ConfigError,
    DTypeError,
    NonFiniteError,
    SequenceError,
    ShapeError,
)
from llmir.runtime.geometry import INT32_MAX, PAD_BLOCK, CacheGeometry

IntArray = npt.NDArray[np.int32]

INT32_MIN = int(np.iinfo(np.int32).min)

MAX_LOGIT = 1e4
"""The largest |q.k| the attention options are checked against: a scale (or
soft cap) whose product with this bound overflows float32 is rejected, so
that a finite logit can never become inf inside the kernels."""

_F32_MAX = float(np.finfo(np.float32).max)


def check_layer(layer: object, num_layers: int) -> int:
    """`layer` must be an integer (not a bool) in ``[0, num_layers)``."""
    if (
        isinstance(layer, bool | np.bool_)
        or not isinstance(layer, int | np.integer)
        or not 0 <= layer < num_layers
    ):
        raise ShapeError(
            f"layer {layer!r} is out of range, the cache has {num_layers} layers"
        )
    return int(layer)


def check_seq_id(seq_id: object) -> int:
    """One sequence id: an integer (Python or numpy, not bool) within int32."""
    if isinstance(seq_id, bool | np.bool_) or not isinstance(seq_id, int | np.integer):
        raise SequenceError(f"sequence id {seq_id!r} is not an integer")
    if not INT32_MIN <= seq_id <= INT32_MAX:
        raise SequenceError(f"sequence id {seq_id} does not fit in int32")
    return int(seq_id)


def check_seq_ids(seq_ids: object) -> npt.NDArray[np.int64]:
    """A batch of sequence ids: a 1-D integer array (or sequence of ints)
    within int32.  Returned as int64.  (Repeated ids are the bookkeeping's to
    reject: it skips the check for the batch it saw last.)"""
    if isinstance(seq_ids, int | np.integer) and not isinstance(
        seq_ids, bool | np.bool_
    ):
        seq_ids = [seq_ids]
    try:
        ids = np.asarray(seq_ids)
    except (TypeError, ValueError) as exc:
        raise SequenceError(f"sequence ids {seq_ids!r} are not integers") from exc
    if ids.ndim != 1:
        raise ShapeError(f"sequence ids must be 1-D, got shape {ids.shape}")
    if ids.size and (ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer)):
        raise SequenceError(f"sequence ids must be integers, got dtype {ids.dtype}")
    narrow = ids.dtype.itemsize <= (4 if ids.dtype.kind == "i" else 2)
    if ids.size and not narrow:
        # Compare in the source dtype: uint64 values above int64 must not wrap.
        low, high = ids.min(), ids.max()
        if int(low) < INT32_MIN or int(high) > INT32_MAX:
            bad = low if int(low) < INT32_MIN else high
            raise SequenceError(f"sequence id {int(bad)} does not fit in int32")
    return ids.astype(np.int64, copy=False)


def check_unique(ids: list[int]) -> None:
    """No sequence id listed twice in one batch."""
    if len(set(ids)) != len(ids):
        seen: set[int] = set()
        dup = next(s for s in ids if s in seen or seen.add(s))
        raise SequenceError(f"sequence {dup} appears more than once in the batch")


@dataclass(frozen=True)
class BlockTable:
    """A block table checked against a pool: kernels may index it blindly.

    `table` int32 ``[batch, width]`` and `lens` int32 ``[batch]``, both
    C-contiguous; every block a sequence's length needs is a block id of the
    pool.  `max_len` is ``max(lens)`` (0 for an empty batch).
    """

    table: IntArray
    lens: IntArray
    max_len: int

    @property
    def batch(self) -> int:
        return int(self.lens.shape[0])


def validate_block_table(
    block_table: Any,
    seq_lens: Any,
    *,
    block_size: int,
    num_blocks: int,
    max_seq_len: int,
    reads: AttentionReads | None = None,
) -> BlockTable:
    """Check a block table against a pool.

    Accepted: `block_table` an integer array ``[batch, max_blocks]``,
    `seq_lens` an integer array ``[batch]``, with for every row ``b``:

      * ``0 <= seq_lens[b] <= min(max_seq_len, max_blocks * block_size)``;
      * the first ``ceil(seq_lens[b] / block_size)`` entries are block ids in
        ``[0, num_blocks)``;
      * entries past those are ``-1`` (padding) or block ids in range (a
        table cut from a longer sequence is fine: kernels never read them).

    With `reads` (an attention call's mask), a block of a sequence that no
    query of the call can see may be ``-1`` too: the hole left where a
    pruned sequence gave a block back (`CacheOptions.window_tokens`).

    Raises DTypeError for non-integer arrays, ShapeError for wrong ranks or
    mismatched batch sizes, BlockTableError for everything else, naming the
    row, the column and the bad value.
    """
    table = np.asarray(block_table)
    lens = np.asarray(seq_lens)
    if (
        table.dtype == np.int32
        and lens.dtype == np.int32
        and table.ndim == 2
        and lens.ndim == 1
        and lens.shape[0] == table.shape[0]
        and table.flags.c_contiguous
        and lens.flags.c_contiguous
    ):
        # The tables the cache hands out: one compiled pass accepts them
        # (every call of attention pays this check).  Anything it does not
        # accept goes through the checks below, which name the fault or
        # accept the holes a mask hides.
        max_len = _plain_table_max_len(table, lens, num_blocks, block_size, max_seq_len)
        if max_len >= 0:
            return BlockTable(table, lens, int(max_len))
    for name, arr in (("block_table", table), ("seq_lens", lens)):
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
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
    if lens.size == 0:
        return BlockTable(
            np.ascontiguousarray(table, dtype=np.int32),
            np.ascontiguousarray(lens, dtype=np.int32),
            0,
        )

    low, high = int(lens.min()), int(lens.max())
    if low < 0:
        b = int(np.argmax(lens < 0))
        raise BlockTableError(f"seq_lens[{b}] = {int(lens[b])} is negative")
    if high > max_seq_len:
        b = int(np.argmax(lens > max_seq_len))
        raise BlockTableError(
            f"seq_lens[{b}] = {int(lens[b])} exceeds max_seq_len {max_seq_len}"
        )
    capacity = table.shape[1] * block_size
    if high > capacity:
        b = int(np.argmax(lens > capacity))
        raise BlockTableError(
            f"seq_lens[{b}] = {int(lens[b])} but block_table covers only "
            f"{capacity} tokens ({table.shape[1]} blocks of {block_size})"
        )

    in_range = (table >= 0) & (table < num_blocks)
    if not in_range.all():
        blocks_needed = (lens.astype(np.int64) + block_size - 1) // block_size
        columns = np.arange(table.shape[1])[None, :]
        live = columns < blocks_needed[:, None]
        read = live if reads is None else live & reads.blocks_read(lens, columns)
        bad_live = np.argwhere(read & ~in_range)
        if bad_live.size:
            b, j = (int(v) for v in bad_live[0])
            value = int(table[b, j])
            what = (
                "padding (-1)"
                if value == PAD_BLOCK
                else f"out of range, the pool has {num_blocks} blocks"
            )
            needs = (
                f"needs {int(blocks_needed[b])} blocks"
                if reads is None
                else f"and the attention reads it ({reads}; a pruned "
                "sequence needs a mask that stays clear of its holes)"
            )
            raise BlockTableError(
                f"block_table[{b}, {j}] = {value} is {what}, but seq_lens[{b}] = "
                f"{int(lens[b])} {needs}"
            )
        bad_pad = np.argwhere(~read & ~in_range & (table != PAD_BLOCK))
        if bad_pad.size:
            b, j = (int(v) for v in bad_pad[0])
            raise BlockTableError(
                f"block_table[{b}, {j}] = {int(table[b, j])} is neither a block id "
                f"in [0, {num_blocks}) nor the padding value {PAD_BLOCK}"
            )
    return BlockTable(
        np.ascontiguousarray(table, dtype=np.int32),
        np.ascontiguousarray(lens, dtype=np.int32),
        high,
    )


@njit(cache=True)
def _plain_table_max_len(
    table: Any, lens: Any, num_blocks: Any, block_size: Any, max_seq_len: Any
) -> Any:
    """max(lens) when every row is plainly valid: ``0 <= len <= min(max_seq_len,
    width * block_size)``, the blocks the length needs in ``[0, num_blocks)``
    and every entry past them a block id or padding; else -1.  A subset of
    what `validate_block_table` accepts (no holes), decided in one pass."""
    capacity = table.shape[1] * block_size
    high = 0
    for b in range(lens.shape[0]):
        n = lens[b]
        if n < 0 or n > max_seq_len or n > capacity:
            return -1
        high = max(high, n)
        needed = (n + block_size - 1) // block_size
        for j in range(table.shape[1]):
            block = table[b, j]
            if block >= num_blocks or (block < 0 and (j < needed or block != -1)):
                return -1
    return high


@dataclass(frozen=True)
class AttentionReads:
    """Which tokens an attention call reads of each sequence: with a window,
    only the first `sink_tokens` and those from ``L - num_queries -
    window + 1`` on (the first query's window), so blocks wholly between
    may be holes."""

    block_size: int
    num_queries: int
    window: int  # 0: every token is read
    sink_tokens: int
    holes_allowed: bool = False
    """The cache gives blocks back by attention mass (heavy hitters): holes
    may be anywhere, and the kernels skip them (their tokens are masked)."""

    def blocks_read(
        self, lens: npt.NDArray[Any], columns: npt.NDArray[Any]
    ) -> npt.NDArray[np.bool_]:
        """[batch, width]: whether the call must find logical block `column`."""
        if self.holes_allowed:
            return np.zeros((lens.shape[0], columns.shape[1]), bool)
        if self.window == 0:
            return np.ones((lens.shape[0], columns.shape[1]), bool)
        b = self.block_size
        first_read = np.maximum(
            lens.astype(np.int64) - self.num_queries - self.window + 1, 0
        )
        sinks = np.minimum(self.sink_tokens, lens.astype(np.int64))
        return (columns * b < sinks[:, None]) | (
            (columns + 1) * b > first_read[:, None]
        )

    def __str__(self) -> str:
        queries = f"{self.num_queries} quer{'y' if self.num_queries == 1 else 'ies'}"
        window = f"sliding_window={self.window}" if self.window else "no sliding_window"
        sinks = f"sink_tokens={self.sink_tokens}" if self.sink_tokens else "no sinks"
        return f"{queries}, {window}, {sinks}"


def validate_table_for(
    geometry: CacheGeometry,
    num_blocks: int,
    block_table: Any,
    seq_lens: Any,
    reads: AttentionReads | None = None,
) -> BlockTable:
    """`validate_block_table` against a cache of `geometry` and `num_blocks`."""
    return validate_block_table(
        block_table,
        seq_lens,
        block_size=geometry.block_size,
        num_blocks=num_blocks,
        max_seq_len=geometry.max_seq_len,
        reads=reads,
    )


# ---------------------------------------------------------------------------
# Attention


@dataclass(frozen=True)
class AttentionOptions:
    """Checked attention options: `scale` resolved (default 1/sqrt(D)) and
    rounded to float32, 0 for an absent window or soft cap (the kernels'
    encoding of "off")."""

    scale: float
    causal: bool
    sliding_window: int
    logits_soft_cap: float
    sink_tokens: int = 0
    """Attention sinks: with a sliding window, keys at positions below this
    are attended too (StreamingLLM's mask); 0: none."""
    context_partition: int | None = None
    """How a kernel splits long contexts: None to plan it itself, 0 to keep
    contexts whole, or a partition size in tokens.  A backend that runs a
    slice of the heads sets the plan of the whole cache, so that its
    results are bit-identical to the unsliced cache's."""


def check_scale(scale: object, head_dim: int) -> float:
    """The softmax scale: None for 1/sqrt(head_dim); otherwise a finite
    positive number whose product with `MAX_LOGIT` is a finite float32."""
    if scale is None:
        return float(np.float32(1.0 / math.sqrt(head_dim)))
    value = _finite_positive("scale", scale)
    if value * MAX_LOGIT > _F32_MAX or np.float32(value) == 0:
        raise ConfigError(
            f"scale {value!r} is outside the float32 range usable for logits "
            f"up to {MAX_LOGIT:g} (at most {_F32_MAX / MAX_LOGIT:.3g}, nonzero in "
            "float32)"
        )
    return float(np.float32(value))


def check_soft_cap(cap: object) -> float:
    """A logits soft cap: None for off, else finite, positive and nonzero in
    float32."""
    if cap is None:
        return 0.0
    value = _finite_positive("logits_soft_cap", cap)
    if np.float32(value) == 0 or not math.isfinite(float(np.float32(value))):
        raise ConfigError(
            f"logits_soft_cap {value!r} is not representable as a nonzero float32"
        )
    return float(np.float32(value))


def check_window(window: object) -> int:
    """A sliding window: None for off, else a positive integer within int32."""
    if window is None:
        return 0
    if (
        isinstance(window, bool | np.bool_)
        or not isinstance(window, int | np.integer)
        or not 1 <= window <= INT32_MAX
    ):
        raise ConfigError(
            f"sliding_window must be an integer in [1, {INT32_MAX}], got {window!r}"
        )
    return int(window)


def check_sinks(sinks: object, window: int) -> int:
    """Attention sinks: None for none, else a positive integer within int32,
    and only next to a sliding window (without one every key is seen)."""
    if sinks is None:
        return 0
    if (
        isinstance(sinks, bool | np.bool_)
        or not isinstance(sinks, int | np.integer)
        or not 1 <= sinks <= INT32_MAX
    ):
        raise ConfigError(
            f"sink_tokens must be an integer in [1, {INT32_MAX}], got {sinks!r}"
        )
    if window == 0:
        raise ConfigError(
            f"sink_tokens={sinks} needs a sliding_window: without one every key "
            "is attended already"
        )
    return int(sinks)


def _finite_positive(name: str, value: object) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{name} must be a finite positive number, got {value!r}")
    return number


def check_attention_options(
    head_dim: int,
    scale: object = None,
    causal: object = True,
    sliding_window: object = None,
    logits_soft_cap: object = None,
    sink_tokens: object = None,
) -> AttentionOptions:
    """The checked options of one attention call.  A model passes the same
    few options on every call, so checked ones are remembered (by value and
    type: ``1`` and ``True`` stay apart); unhashable values are checked
    every time."""
    args = (head_dim, scale, causal, sliding_window, logits_soft_cap, sink_tokens)
    try:
        hash(args)
    except TypeError:
        return _check_attention_options(*args)
    return _remembered_attention_options(*args)


def _check_attention_options(
    head_dim: int,
    scale: object,
    causal: object,
    sliding_window: object,
    logits_soft_cap: object,
    sink_tokens: object,
) -> AttentionOptions:
    if not isinstance(causal, bool | np.bool_):
        raise ConfigError(f"causal must be a bool, got {causal!r}")
    window = check_window(sliding_window)
    return AttentionOptions(
        check_scale(scale, head_dim),
        bool(causal),
        window,
        check_soft_cap(logits_soft_cap),
        check_sinks(sink_tokens, window),
    )


_remembered_attention_options = lru_cache(maxsize=256, typed=True)(
    _check_attention_options
)


QUERY_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def check_query(
    shape: Sequence[int], dtype: Any, batch: int, num_kv_heads: int, head_dim: int
) -> None:
    """A query ``[batch, Tq, Hq, D]`` of float32 or float16 for `batch`
    sequences of a pool with `num_kv_heads` heads of `head_dim`, Hq a
    positive multiple of them."""
    if np.dtype(dtype) not in QUERY_DTYPES:
        raise DTypeError(
            f"query dtype {dtype} is not supported, expected float32 or float16 "
            "(pass bf16 queries as their float32 values)"
        )
    if len(shape) != 4:
        raise ShapeError(
            f"query must be 4-D [batch, Tq, Hq, D], got shape {tuple(shape)}"
        )
    q_batch, _, q_heads, q_dim = shape
    if q_batch != batch:
        raise ShapeError(f"query has batch {q_batch} but seq_lens has {batch} entries")
    if q_dim != head_dim:
        raise ShapeError(
            f"query head_dim {q_dim} does not match the cache's {head_dim}"
        )
    if q_heads == 0 or q_heads % num_kv_heads:
        raise ShapeError(
            f"query has {q_heads} heads, not a positive multiple of the cache's "
            f"{num_kv_heads} kv heads"
        )


# ---------------------------------------------------------------------------
# Token ids (prefix caching)


def integer_array(name: str, value: object) -> npt.NDArray[Any]:
    """`value` as an integer array (any shape); ragged or non-integer input
    is a DTypeError."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DTypeError(f"{name} {value!r} are not integers") from exc
    if array.size and (
        array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer)
    ):
        raise DTypeError(f"{name} must be integers, got dtype {array.dtype}")
    return array


def _check_int32(name: str, array: npt.NDArray[Any], low: int) -> IntArray:
    if array.size:
        small, big = int(array.min()), int(array.max())
        if small < low or big > INT32_MAX:
            bad = small if small < low else big
            raise ShapeError(
                f"{name} holds {bad}, outside [{low}, {INT32_MAX}]"
                + (" (negative ids pad a prompt's end only)" if low < 0 else "")
            )
    return np.ascontiguousarray(array, dtype=np.int32)


def check_token_ids(token_ids: object, batch: int, tokens: int) -> IntArray:
    """The token ids of an append: integers in ``[0, 2^31)``, int32
    ``[batch, tokens]`` (one per appended position)."""
    array = integer_array("token_ids", token_ids)
    if array.shape != (batch, tokens):
        raise ShapeError(
            f"token_ids has shape {array.shape}, expected ({batch}, {tokens}): one "
            "id per appended token"
        )
    return _check_int32("token_ids", array, 0)


def check_prompts(token_ids: object, batch: int) -> tuple[IntArray, IntArray]:
    """Prompts for prefix matching: int32 ``[batch, T]``, each row a prompt
    followed by negative padding (nothing but padding after the first
    negative id).  Returns (ids, lengths)."""
    array = integer_array("token_ids", token_ids)
    if array.ndim != 2 or array.shape[0] != batch:
        raise ShapeError(
            f"token_ids has shape {array.shape}, expected ({batch}, T): one prompt "
            "per sequence"
        )
    ids = _check_int32("token_ids", array, INT32_MIN)
    if ids.shape[1] == 0:  # empty prompts: nothing to match
        return ids, np.zeros(batch, np.int32)
    padding = ids < 0
    lens = np.where(padding.any(axis=1), padding.argmax(axis=1), ids.shape[1])
    after = np.arange(ids.shape[1])[None, :] >= lens[:, None]
    if (after & ~padding).any():
        row = int(np.argwhere(after & ~padding)[0][0])
        raise ShapeError(
            f"token_ids row {row} has a token after the padding at position "
            f"{int(lens[row])}: pad prompts at their end only"
        )
    return ids, lens.astype(np.int32)


# ---------------------------------------------------------------------------
# Slot mappings (reserved steps)


def check_slots(
    slots: object, batch: int, tokens: int, block_size: int, used: npt.NDArray[Any]
) -> IntArray:
    """A slot mapping for `batch` x `tokens` tokens: int32 ``[batch, tokens]``
    slots ``block * block_size + offset`` whose blocks are in use (`used`:
    a bool per block of the pool), so that a write can never land outside
    the pool or in a free block."""
    array = np.asarray(slots)
    if array.dtype != np.int32:
        raise DTypeError(f"slots must be int32, got dtype {array.dtype}")
    if array.shape != (batch, tokens):
        raise ShapeError(
            f"slots has shape {array.shape}, expected ({batch}, {tokens}) for the keys"
        )
    if array.size:
        limit = used.size * block_size
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= limit:
            bad = low if low < 0 else high
            raise BlockTableError(
                f"slot {bad} is outside the pool's {limit} slots "
                f"({used.size} blocks of {block_size})"
            )
        free = ~used[array // block_size]
        if free.any():
            bad = int(array[free][0])
            raise BlockTableError(
                f"slot {bad} lies in block {bad // block_size}, which no sequence "
                "holds: write only into slots reserved by reserve_slots"
            )
    return np.ascontiguousarray(array)


@njit(parallel=True, cache=True)
def _count_non_finite(flat: Any) -> Any:  # pragma: no cover - njit
    """How many elements of a 1D float array are inf or NaN, in one parallel
    pass that allocates nothing (``np.isfinite(a).all()`` writes a boolean
    array first: 4.9 ms against 2.4 ms for 64 MiB of float32, two cores)."""
    count = 0
    for i in prange(flat.size):
        x = flat[i]
        count += np.int64(not abs(x) < np.inf)
    return count


def require_finite(name: str, array: Any, holder: str) -> None:
    """Refuse an inf or a NaN in a host array, naming the first.  Device
    arrays are the caller's to keep finite (checking them would copy them to
    the host)."""
    if not isinstance(array, np.ndarray):
        return
    if (
        array.dtype in (np.float32, np.float64)
        and array.flags.c_contiguous
        and not _count_non_finite(array.reshape(-1))
    ):
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    where = np.unravel_index(int(np.argmin(finite)), array.shape)
    index = ", ".join(str(int(i)) for i in where)
    raise NonFiniteError(
        f"{name}[{index}] is {array[where]}: {holder} holds finite values only"
    )
