"""The Numba kernels of paged attention on the CPU, on raw arrays.

Nothing here validates: `PagedKVCache` checks every argument once and the
CPU backend calls `run_paged_attention`.  The semantics (query positions,
masks, empty sequences) are those of `llmir.testing.reference`.

Work split.  One work item is (sequence, kv head, query tile, context
partition).  The item handles the whole GQA group of query heads of its kv
head, so each K/V block is read from memory once per group rather than once
per query head (1.5x faster than one item per query head in the prototype).
Decode has one query tile; prefill splits its Tq queries into tiles of
`q_tile`.  When there are too few items to keep every thread busy (batch 1,
few kv heads) and contexts are long, the context is split into partitions of
`partition_size` tokens whose partial softmax states (running max, sum and
unnormalized output) are merged in a second pass: the flash-decoding / vLLM
paged-attention v2 scheme.

Inner loops.  Per block and query row, the item computes the scores of the
whole block into a small buffer, folds them into the row's online softmax
state (one rescale per block, not per token) and accumulates ``p * V``.
Measured choices (see the functions' docstrings):

* a single query row (MHA decode) reads the pool directly, decoding f16/bf16
  elements on the fly, one key or value row at a time: each element is used
  once, and this was 1.3-1.8x faster for halves than decoding into scratch;
* rows in fours sharing their bounds (a GQA group, or prefill queries that
  all see the whole block) go through the vector tiles of
  `llmir.runtime.cpu.simd`: the scores four rows by two tokens, ``P V``
  four rows by sixteen channels held in registers across the block.  A
  group of four reads the pool directly, converting each element once; more
  rows convert a half block once into scratch first (quantized blocks are
  decoded into it).  The tiles prefetch the next block line by line as
  they read this one.  GQA
  32/8 decode measured 1.1-2.7x faster in halves than the four-row register
  tile this replaced, and 1.4-1.6x in float32 at block 16 than the scratch
  path below (no gain at float32 block 64);
* otherwise, with several rows (GQA, prefill), half blocks are decoded once
  into float32 scratch (float32 blocks are used in place); the first row of
  a float32 group streams the block from memory as above, and the other
  rows, reading cached data, take four key/value rows per pass (the tile
  measured 0.7-0.8x slower than this on float32 pools, whose twice larger
  blocks it reads with too little memory parallelism);
* quantized blocks (i8, i4) go through tiles of the same module over their
  codes, one query row (MHA decode) or four at a time, the key scales folded
  into the query and the values decoded in registers once for all rows, so
  no block is decoded into memory (at batch 8 x 8192, MHA decode measured
  1.6-2.0x (i8) and 3.3-4.0x (i4) faster than the scalar code loops this
  replaced, GQA 32/8 1.5-2.2x and 1.7-2.9x faster than decoding into
  scratch, in two pairs of runs);
  layouts the tiles do not fit (head_dim not a multiple of 32, blocks
  under 8) are decoded once into float32 scratch;
* i8 rows in fours (and single rows in blocks under 64), on a CPU with
  AVX-512 VNNI (`vnni.enabled`), take both products on its integer dot
  products instead (`vnni`): the scaled query and the weights as 15-bit
  integers, the codes as they are stored (hot GQA 32/8, ns per token and
  kv head: block 16 44.1 -> 35.8, block 64 49.5 -> 31.8; batch 8 x 8192,
  MHA 16/16 at block 16: 13.36-13.51 -> 11.48-11.52 ms);
* f16 and bf16 items of 16 rows or more (f16: 32), on a CPU with AMX
  (`amx.enabled`), take both products of a block on AMX tiles instead
  (`_attend_blocks_amx`, `amx_attention`): sixteen rows at a time, blocks
  smaller than 64 tokens four at a time.  Prefill, batch 1, 2048 tokens,
  D 128, MHA 16/16, against the AVX-512 path: bf16 109 -> 52 ms at block
  64 and 109 -> 52 ms at block 16, f16 116 -> 82-91 ms and 110 -> 93 ms;
* softmax weights use a polynomial float32 exp (no libm call);
* blocks are prefetched, since a block table scatters them where the
  hardware prefetcher cannot follow: the first cache lines of the next
  block at once, and the whole block after it spread over the reading of
  this one, into L2 (MHA decode at batch 8 x 8192, block 16, measured f16
  33.4 -> 27.9 ms and i8 24.3 -> 20.5 ms against the next block alone).

Fast math is limited to the flags that reorder sums (``reassoc``,
``contract``): they let LLVM split the q.k and p.V sums across vector lanes
and fuse multiply-adds, which changes results only by rounding.  Masking is
done by loop bounds, never by -inf arithmetic, and the -inf initial running
max is legal because "no infinities" is not among the flags.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import njit, prange, types  # pyright: ignore[reportUnknownVariableType]
from numba.extending import intrinsic, overload

from llmir.runtime.cpu import amx, amx_attention, vnni
from llmir.runtime.cpu.codecs import bf16_bits_to_f32, f16_bits_to_f32
from llmir.runtime.cpu.quant_kernels import decode_block_rows, load_key_meta
from llmir.runtime.cpu.simd import (
    CHANNELS,
    COLUMN_KEYS,
    I4_GROUP,
    LANES,
    ROWS,
    cap_row,
    cap_rows,
    exp_nonpositive,
    halves_to_f32,
    prefetch_ir,
    pv_row,
    pv_row_stream,
    pv_tile,
    qk_columns,
    qk_row,
    qk_row_stream,
    qk_tile,
    row_exponential,
    row_exponentials,
    row_maxima,
    row_maximum,
    rows_to_f32,
    scale_query_rows,
    transpose_block,
)
from llmir.runtime.cpu.vnni import pv_codes as vnni_pv_codes
from llmir.runtime.cpu.vnni import (
    qk_codes,
    qk_codes_row,
    quantize_query_row,
    quantize_query_rows,
)
from llmir.runtime.dtypes import BF16_CODE, F16_CODE, F32_CODE, I4_CODE, I8_CODE
from llmir.runtime.geometry import KEY, VALUE, layer_block_size_axis

DEFAULT_PARTITION_SIZE = 512
"""Tokens per context partition when a long context is split (decode)."""

DEFAULT_Q_TILE = 16
"""The fewest queries per work item in prefill: enough rows to reuse each
decoded block, few enough that every thread gets many items."""

TILE_ROWS = 64
"""Query rows (queries times the GQA group) a prefill work item aims for:
each block it reads is then used by that many rows while in L1.  MHA
prefill (batch 1, 2048 tokens, f32 and bf16) ran 8-12% faster with 64
queries per item than with 16; GQA 32/8 (64 rows at 16 queries) was level
at 16, 32 and 64 queries."""

# ---------------------------------------------------------------------------
# Block access, specialized per storage dtype at compile time


def block_as_f32(
    stored: Any, scratch: Any, kind_code: int, lo: int, hi: int
) -> Any:  # pragma: no cover - replaced by the overload inside @njit code
    """Slots ``lo:hi`` of a ``[block_size, D]`` block as float32 (njit only)."""
    raise NotImplementedError("block_as_f32 is only callable from @njit code")


@overload(block_as_f32, inline="always")
def _block_as_f32_impl(stored: Any, scratch: Any, kind_code: Any, lo: Any, hi: Any):
    # Chosen by the pool's dtype when the kernel is compiled, so the float32
    # kernel has no conversion code at all and the half kernels branch on the
    # kind once per block, never per element.
    if stored.dtype == types.float32:

        def use_in_place(stored: Any, scratch: Any, kind_code: Any, lo: Any, hi: Any):
            return stored

        return use_in_place

    if stored.dtype == types.uint8:
        # Quantized blocks are read as codes through the tiles
        # (`attend_codes`) or decoded into the scratch (`decode_codes`).

        def codes_stay(stored: Any, scratch: Any, kind_code: Any, lo: Any, hi: Any):
            return scratch

        return codes_stay

    def decode_halves(stored: Any, scratch: Any, kind_code: Any, lo: Any, hi: Any):
        head_dim = stored.shape[1]
        if kind_code == F16_CODE:
            for t in range(lo, hi):
                for d in range(head_dim):
                    scratch[t, d] = f16_bits_to_f32(stored[t, d])
        else:
            for t in range(lo, hi):
                for d in range(head_dim):
                    scratch[t, d] = bf16_bits_to_f32(stored[t, d])
        return scratch

    return decode_halves


def _transpose_keys(
    keys: Any, lo: int, hi: int, keys_t: Any
) -> None:  # pragma: no cover - replaced by the overload inside @njit code
    """``keys_t[:, t] = keys[t]`` over ``lo:hi`` widened to whole sixteens
    (float32 keys; nothing for stored halves, which are converted first)."""
    raise NotImplementedError("_transpose_keys is only callable from @njit code")


@overload(_transpose_keys, inline="always")
def _transpose_keys_impl(keys: Any, lo: Any, hi: Any, keys_t: Any):
    if keys.dtype != types.float32:

        def nothing(keys: Any, lo: Any, hi: Any, keys_t: Any):
            return None

        return nothing

    def transpose(keys: Any, lo: Any, hi: Any, keys_t: Any):
        start = lo - lo % COLUMN_KEYS
        stop = hi + (-hi) % COLUMN_KEYS
        transpose_block(keys, start, stop, keys_t)  # pyright: ignore[reportCallIssue]

    return transpose


def element_f32(
    stored: Any, t: int, d: int, kind_code: int
) -> Any:  # pragma: no cover - replaced by the overload inside @njit code
    """Element ``[t, d]`` of a stored block as float32 (njit only)."""
    raise NotImplementedError("element_f32 is only callable from @njit code")


@overload(element_f32, inline="always")
def _element_f32_impl(stored: Any, t: Any, d: Any, kind_code: Any):
    # As for block_as_f32: float32 pools compile to a plain load; for halves
    # the kind test is loop-invariant, and LLVM hoists it out of the loops.
    if stored.dtype == types.float32:

        def load(stored: Any, t: Any, d: Any, kind_code: Any):
            return stored[t, d]

        return load

    def load_half(stored: Any, t: Any, d: Any, kind_code: Any):
        if kind_code == F16_CODE:
            return f16_bits_to_f32(stored[t, d])
        return bf16_bits_to_f32(stored[t, d])

    return load_half


# ---------------------------------------------------------------------------
# The kernel

# Only the fast-math flags that reorder sums (reassociation, FMA contraction),
# not the full set: "no infinities" would license LLVM to miscompile the
# -inf initial running max of the online softmax.
_REORDER_SUMS = {"reassoc", "contract"}


_CACHE_LINE_BYTES = 64


@intrinsic
def prefetch_line(typingctx: Any, array: Any, offset: Any) -> Any:
    """Hint the CPU to load the cache line holding element `offset` of the
    flattened C-contiguous `array` into L2 (LLVM's ``llvm.prefetch``, read,
    locality 2: ``prefetcht1``; into L1 measured 3-5% slower for i8 MHA
    decode, whose prefetches run a block or two ahead)."""
    sig = types.void(array, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(
            builder.gep(data, [args[1]]), ir.IntType(8).as_pointer()
        )
        prefetch_ir(builder, address)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always", fastmath=_REORDER_SUMS, cache=True)
def _soft_cap_and_max(scores: Any, lo: Any, hi: Any, soft_cap: Any) -> Any:
    """Apply the soft cap (if any) to ``scores[lo:hi]``; return their max."""
    if soft_cap > 0:
        cap_row(scores.reshape((1, scores.shape[0])), lo, hi, soft_cap)  # pyright: ignore[reportCallIssue]
    block_max = scores[lo]
    for t in range(lo + 1, hi):
        block_max = max(block_max, scores[t])
    return block_max


@njit(inline="always", fastmath=_REORDER_SUMS, cache=True)
def _block_scores(
    q_rows: Any,
    keys: Any,
    lo: Any,
    hi: Any,
    scores: Any,
    r: Any,
    soft_cap: Any,
    kind_code: Any,
    pool: Any,
    far_run: Any,
) -> Any:
    """Logits of query row `r` against slots ``lo:hi`` into `scores`, one key
    row at a time (a single sequential stream), prefetching the same key
    rows of the block whose run starts at `far_run` (`_prefetch_part`);
    returns their maximum."""
    head_dim = keys.shape[1]
    for t in range(lo, hi):
        _prefetch_part(pool, far_run, KEY, t, head_dim)
        s = np.float32(0.0)
        for d in range(head_dim):
            s += q_rows[r, d] * element_f32(keys, t, d, kind_code)
        scores[t] = s
    return _soft_cap_and_max(scores, lo, hi, soft_cap)


@njit(inline="always", fastmath=_REORDER_SUMS, cache=True)
def _block_scores_unrolled(
    q_rows: Any, keys: Any, lo: Any, hi: Any, scores: Any, r: Any, soft_cap: Any
) -> Any:
    """`_block_scores` with four key rows per pass, each loaded q element
    serving four dot products (1.3-1.6x faster on cached blocks)."""
    head_dim = keys.shape[1]
    t = lo
    while t + 4 <= hi:
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        s3 = np.float32(0.0)
        for d in range(head_dim):
            qd = q_rows[r, d]
            s0 += qd * keys[t, d]
            s1 += qd * keys[t + 1, d]
            s2 += qd * keys[t + 2, d]
            s3 += qd * keys[t + 3, d]
        scores[t] = s0
        scores[t + 1] = s1
        scores[t + 2] = s2
        scores[t + 3] = s3
        t += 4
    while t < hi:
        s = np.float32(0.0)
        for d in range(head_dim):
            s += q_rows[r, d] * keys[t, d]
        scores[t] = s
        t += 1
    return _soft_cap_and_max(scores, lo, hi, soft_cap)


@njit(inline="always", fastmath=_REORDER_SUMS, cache=True)
def _rescale_state(row_max: Any, row_sum: Any, acc: Any, r: Any, block_max: Any) -> Any:
    """Raise row `r`'s running max to cover `block_max`, rescaling its sum
    and accumulator; returns the new max."""
    old_max = row_max[r]
    new_max = max(old_max, block_max)
    row_max[r] = new_max
    # The empty state (max -inf, sum and accumulator 0) needs no rescale.
    if old_max != new_max and old_max != -np.inf:
        correction = np.float32(math.exp(old_max - new_max))
        row_sum[r] *= correction
        for d in range(acc.shape[1]):
            acc[r, d] *= correction
    return new_max


@njit(inline="always", cache=True)
def _cap_scores(scores: Any, rows: Any, lo: Any, hi: Any, soft_cap: Any) -> None:
    """The soft cap of ``scores[i, lo:hi]``, i < `rows` (1 or 4): ``cap *
    tanh(s / cap)``, eight lanes at a time (`simd.cap_rows`; libm's tanhf,
    one call per score, made a soft-capped prefill about 2.2x slower than an
    uncapped one)."""
    if rows == ROWS:
        cap_rows(scores, lo, hi, soft_cap)  # pyright: ignore[reportCallIssue]
    else:
        cap_row(scores, lo, hi, soft_cap)  # pyright: ignore[reportCallIssue]


@njit(inline="always", fastmath=_REORDER_SUMS, cache=True)
def _tile_weights(
    scores: Any, rows: Any, lo: Any, hi: Any, soft_cap: Any, row_max: Any,
    row_sum: Any, acc: Any, r: Any,
) -> None:  # fmt: skip
    """Turn the logits ``scores[i, lo:hi]`` of query rows ``r + i`` (i <
    `rows`, 1 or 4) into their softmax weights in place, folding the block
    into each row's running max and sum, after the soft cap if `soft_cap`
    is positive (`_cap_scores`).

    The four rows of a tile go side by side through the vector max and
    exponentials of `llmir.runtime.cpu.simd`: one row's 16 exponentials are
    two vectors whose long dependency chains the CPU cannot hide, four rows'
    are eight."""
    if soft_cap > 0:
        _cap_scores(scores, rows, lo, hi, soft_cap)
    if rows == 1:
        (block_max,) = row_maximum(scores, lo, hi)  # pyright: ignore[reportCallIssue]
        shift = _rescale_state(row_max, row_sum, acc, r, block_max)
        (block_sum,) = row_exponential(scores, lo, hi, (shift,))  # pyright: ignore[reportCallIssue]
        row_sum[r] += block_sum
        return
    max0, max1, max2, max3 = row_maxima(scores, lo, hi)  # pyright: ignore[reportCallIssue]
    shifts = (
        _rescale_state(row_max, row_sum, acc, r, max0),
        _rescale_state(row_max, row_sum, acc, r + 1, max1),
        _rescale_state(row_max, row_sum, acc, r + 2, max2),
        _rescale_state(row_max, row_sum, acc, r + 3, max3),
    )
    sum0, sum1, sum2, sum3 = row_exponentials(scores, lo, hi, shifts)  # pyright: ignore[reportCallIssue]
    row_sum[r] += sum0
    row_sum[r + 1] += sum1
    row_sum[r + 2] += sum2
    row_sum[r + 3] += sum3


@njit(inline="always", fastmath=_REORDER_SUMS, error_model="numpy", cache=True)
def _attend_block_streaming(
    q_rows: Any,
    keys: Any,
    values: Any,
    lo: Any,
    hi: Any,
    scores: Any,
    row_max: Any,
    row_sum: Any,
    acc: Any,
    r: Any,
    soft_cap: Any,
    kind_code: Any,
    pool: Any,
    far_run: Any,
) -> None:
    """Fold slots ``lo:hi`` (non-empty) of one block into the online-softmax
    state of query row `r` (queries pre-scaled), one value row at a time.

    For a row reading straight from the pool (`keys`/`values` stored
    elements of `kind_code`, decoded on the fly): the first row of a float32
    group, the single row of a float32 MHA decode, and that of a
    half-precision one whose shape the one-row tiles do not take
    (`_attend_block_row`), where decoding the block into scratch first
    would cost more than it saves.  The value
    rows then arrive from memory, and one sequential stream measured up to
    1.4x faster than the four interleaved ones of `_attend_block_unrolled`.

    The block at `far_run` (two ahead in the walk) is prefetched as this one
    is read: its key rows with the scores, its value rows with ``P V``.
    Before, the ``P V`` loop prefetched both, so the scores' half of the
    block issued no prefetch and the other half twice as many (Zen 4 VM,
    batch 8 x 8192 tokens, IPEX time / ours in the same process, two runs
    each: f32 block 64 1.24-1.32x -> 1.57-1.70x, f32 block 16 1.28-1.33x
    -> 1.43-1.46x, f16 block 64 1.08-1.23x -> 1.19-1.30x).

    Inlined into the kernel, where `kind_code` is a constant and no call
    per block passes (and reference-counts) its arrays: out of line,
    one thread with the pool in cache took 43.8-48.1 ns a token and head
    in f32 at block 16 (38.3-39.1 in f16, 40.5-41.0 in f32 at block 64),
    inlined 38.9-41.0 (31.8-32.1, 34.8-36.1).
    """
    block_max = _block_scores(
        q_rows, keys, lo, hi, scores, r, soft_cap, kind_code, pool, far_run
    )
    new_max = _rescale_state(row_max, row_sum, acc, r, block_max)
    head_dim = keys.shape[1]
    block_sum = np.float32(0.0)
    for t in range(lo, hi):
        _prefetch_part(pool, far_run, VALUE, t, head_dim)
        p = exp_nonpositive(scores[t] - new_max)
        block_sum += p
        for d in range(head_dim):
            acc[r, d] += p * element_f32(values, t, d, kind_code)
    row_sum[r] += block_sum


@njit(inline="always", fastmath=_REORDER_SUMS, error_model="numpy", cache=True)
def _attend_block_row(
    q_rows: Any, keys: Any, values: Any, lo: Any, hi: Any, scores: Any,
    row_max: Any, row_sum: Any, acc: Any, soft_cap: Any, kind_code: Any,
    ahead: Any,
) -> None:  # fmt: skip
    """`_attend_block_streaming` through vector tiles, for the single row of
    a half-precision MHA decode: the scores eight keys at a time
    (`qk_row_stream`), the weights as vectors (`_tile_weights`), then ``P
    V`` with the row's accumulator in registers (`pv_row_stream`).  Both
    tiles read their rows whole and in order, as the streaming loop does,
    and prefetch the line `ahead` bytes past each line they read (in the
    block two ahead in the walk; where there is none, 0: the line
    itself).  `scores` is ``[1+, block_size]``, the block size a multiple
    of `LANES` and the head dimension of 32.

    Halves only.  Zen 4 VM, batch 8, MHA 16/16, D = 128, the loop and the
    tiles alternated in one process on the same pool, five or six
    processes (loop time / tiles time; README, "One-row tiles"): bf16
    1.11-1.46x at block 16 and 1.00-1.39x at block 64 (8192 tokens),
    1.08-1.43x and 0.99-1.17x (2048); f16 0.93-1.42x and 1.02-1.36x,
    0.95-1.36x and 0.94-1.40x; the tiles faster in 35 of the 41 pairs.
    Float32 reads twice the bytes for the same arithmetic and stays where
    memory holds it: 0.95-1.07x and 0.92-1.13x at 8192 tokens, faster in
    2 of 10, so it keeps the loop.  An earlier form that scored eight
    interleaved rows (`qk_row`) and prefetched each tile's lines in one
    burst before it was slower than the loop in float32 (block 16 33.7 ->
    45.3 ms, block 64 28.2 -> 40.9)."""
    for t in range(lo - lo % LANES, hi, LANES):
        qk_row_stream(q_rows, 0, keys, t, scores, ahead, kind_code)
    _tile_weights(scores, 1, lo, hi, soft_cap, row_max, row_sum, acc, 0)
    pv_row_stream(scores, values, lo, hi, acc, ahead, kind_code)


@njit(fastmath=_REORDER_SUMS, error_model="numpy", cache=True)
def _attend_block_streaming_apart(
    q_rows: Any, keys: Any, values: Any, lo: Any, hi: Any, scores: Any,
    row_max: Any, row_sum: Any, acc: Any, r: Any, soft_cap: Any, kind_code: Any,
    pool: Any, far_run: Any,
) -> None:  # fmt: skip
    """`_attend_block_streaming` out of line, for `_attend_rows`, which is
    inlined in three places: a copy in each made the kernels' first
    compile about 1.3x longer (f32 135 -> 186 s on the Zen 4 VM)."""
    _attend_block_streaming(
        q_rows, keys, values, lo, hi, scores, row_max, row_sum, acc, r, soft_cap,
        kind_code, pool, far_run,
    )  # fmt: skip


@njit(inline="always", fastmath=_REORDER_SUMS, cache=True)
def _attend_block_unrolled(
    q_rows: Any,
    keys: Any,
    values: Any,
    lo: Any,
    hi: Any,
    scores: Any,
    row_max: Any,
    row_sum: Any,
    acc: Any,
    r: Any,
    soft_cap: Any,
) -> None:
    """`_attend_block_streaming` with four value rows per pass, so the row's
    accumulator is loaded and stored once per four tokens: faster (up to
    1.2x) when the block is already in cache, i.e. decoded half blocks and
    every row of a group but the first."""
    block_max = _block_scores_unrolled(q_rows, keys, lo, hi, scores, r, soft_cap)
    new_max = _rescale_state(row_max, row_sum, acc, r, block_max)
    head_dim = keys.shape[1]
    block_sum = np.float32(0.0)
    t = lo
    while t + 4 <= hi:
        p0 = exp_nonpositive(scores[t] - new_max)
        p1 = exp_nonpositive(scores[t + 1] - new_max)
        p2 = exp_nonpositive(scores[t + 2] - new_max)
        p3 = exp_nonpositive(scores[t + 3] - new_max)
        block_sum += (p0 + p1) + (p2 + p3)
        for d in range(head_dim):
            acc[r, d] += (
                p0 * values[t, d]
                + p1 * values[t + 1, d]
                + p2 * values[t + 2, d]
                + p3 * values[t + 3, d]
            )
        t += 4
    while t < hi:
        p = exp_nonpositive(scores[t] - new_max)
        block_sum += p
        for d in range(head_dim):
            acc[r, d] += p * values[t, d]
        t += 1
    row_sum[r] += block_sum


@njit(inline="always", cache=True)
def _prefetch_part(pool: Any, run: Any, which: Any, t: Any, head_dim: Any) -> None:
    """Prefetch slot `t` of the K (`which` = KEY) or the V of the block of a
    float pool (``[blocks, H, 2, block_size, D]``) whose run starts at
    element `run` of the flattened `pool` (-1: none)."""
    if run < 0:
        return
    line = _CACHE_LINE_BYTES // pool.itemsize
    start = run + (which * pool.shape[-2] + t) * head_dim
    for offset in range(start, start + head_dim, line):
        prefetch_line(pool, offset)  # pyright: ignore[reportCallIssue]


@njit(inline="always", cache=True)
def _prefetch_slots(
    pool: Any, next_run: Any, t: Any, count: Any, head_dim: Any
) -> None:
    """Prefetch slots ``t:t+count`` of the K and V of the block of a float
    pool (``[blocks, H, 2, block_size, D]``) whose run starts at element
    `next_run` of the flattened `pool` (-1: none)."""
    if next_run < 0:
        return
    line = _CACHE_LINE_BYTES // pool.itemsize
    values_offset = pool.shape[-2] * head_dim  # from a run's K to its V
    start = next_run + t * head_dim
    for offset in range(start, start + count * head_dim, line):
        prefetch_line(pool, offset)  # pyright: ignore[reportCallIssue]
        prefetch_line(pool, offset + values_offset)  # pyright: ignore[reportCallIssue]


@njit(inline="always", fastmath=_REORDER_SUMS, error_model="numpy", cache=True)
def _attend_block_group(
    q_rows: Any,
    keys: Any,
    values: Any,
    lo: Any,
    hi: Any,
    scores: Any,
    row_max: Any,
    row_sum: Any,
    acc: Any,
    r: Any,
    soft_cap: Any,
    pool: Any,
    next_run: Any,
    kind_code: Any,
    keys_t: Any,
    starts: Any,
    ends: Any,
) -> None:
    """Fold slots ``lo:hi`` (non-empty) of one block (`kind_code` elements,
    converted on load) into the online-softmax states of the four query rows
    ``r:r+4``; `scores` is a ``[4, block_size]`` buffer.  Row ``r + i``
    attends slots ``starts[i]:ends[i]`` (each non-empty; `lo` the smallest
    start, `hi` the largest end): on the causal diagonal each row of a
    prefill tile ends one query further, at a sliding window's edge it
    starts one further.  The slots outside a row's range are scored with
    the others, then, after the soft cap if any, masked out of the row's
    max and weights.

    The scores are `qk_tile`s of four rows by two tokens and ``P V`` one
    `pv_tile` (`llmir.runtime.cpu.simd`), so each element of the block is
    loaded and converted once per four rows.  The next block (its run
    starting at element `next_run` of the flattened `pool`; -1: none) is
    prefetched as this one is computed, so its misses overlap this block's
    arithmetic (1.3-1.4x faster than without in a microbenchmark, at blocks
    of 16 and 64).  Where the tiles read the block from the pool, they
    prefetch as they go: each step of `qk_tile` one line of the next
    block's keys, each token of a `pv_tile` chunk one line of its values,
    so the misses spread evenly over the block's arithmetic (Zen 4 VM, GQA
    32/8, batch 8 x 8192 / 2048 tokens, the kernel before and after
    alternated in one process, time before / after: f32 1.12 / 1.13 at
    block 64 and 1.26 / 1.25 at block 16, bf16 1.03 / 0.99 and 1.29 /
    1.37, f16 0.97 / 1.03 and 1.09 / 1.07; README, "Prefetching inside the
    tiles").  Before, two slots of K and V were prefetched per score
    tile, or at block 64 the K of two slots per score tile and the V of
    each 16 slots in one burst before their ``P V``.  Otherwise (scratch,
    transposed keys) two slots of K and V go per score tile, sixteen per
    column tile.

    With `keys_t` non-empty (the block's keys transposed by
    `_transpose_keys`, float32 ``[D, block_size]``, block_size a multiple of
    16), the scores are `qk_columns` of 16 keys instead: no horizontal sums
    (16 query rows by a hot 16-key block: 939 -> 647 ns, the transpose 106
    ns, done once for all the rows of a prefill item).

    Inlined into the kernel: as a call it made GQA decode 1.12-1.24x and
    prefill 1.19-1.25x slower (one kv head, 2048 tokens, one thread, f32
    and bf16: GQA decode 0.128 -> 0.114 ms and 0.122 -> 0.098 ms, 64
    prefill rows 1.29 -> 1.03 and 1.17 -> 0.99 ms), for a kernel that
    compiles ~40% longer (f32 34 -> 47 s, f16 61 -> 93 s, cached
    afterwards).
    """
    head_dim = keys.shape[1]
    # The tiles prefetch the next block line by line as they read this one,
    # where they read it from the pool (not from scratch, not transposed).
    first_byte = pool.ctypes.data
    streamed = (
        next_run >= 0
        and keys_t.size == 0
        and first_byte <= keys.ctypes.data < first_byte + pool.size * pool.itemsize
    )
    ahead = 0  # bytes from this block's K (and V) to the next one's; 0: none
    if streamed:
        ahead = first_byte + next_run * pool.itemsize - keys.ctypes.data
    t = lo
    if keys_t.size > 0:
        for t_columns in range(lo - lo % COLUMN_KEYS, hi, COLUMN_KEYS):
            _prefetch_slots(pool, next_run, t_columns, COLUMN_KEYS, head_dim)
            qk_columns(q_rows, r, keys_t, t_columns, scores)  # pyright: ignore[reportCallIssue]
        t = hi  # every score is in: no tiles of two below
    while t < hi:
        if not streamed:
            _prefetch_slots(pool, next_run, t, 2, head_dim)
        if t + 2 <= hi:
            qk_tile(q_rows, r, keys, t, scores, ahead, kind_code)
        else:  # an odd last slot
            if streamed:
                _prefetch_part(pool, next_run, KEY, t, head_dim)
            s0 = s1 = s2 = s3 = np.float32(0.0)
            for d in range(head_dim):
                k = element_f32(keys, t, d, kind_code)
                s0 += q_rows[r, d] * k
                s1 += q_rows[r + 1, d] * k
                s2 += q_rows[r + 2, d] * k
                s3 += q_rows[r + 3, d] * k
            scores[0, t] = s0
            scores[1, t] = s1
            scores[2, t] = s2
            scores[3, t] = s3
        t += 2

    masked = ends[0] < hi or starts[ROWS - 1] > lo  # row 0 ends first, 3 starts last
    cap = soft_cap
    if masked:
        if soft_cap > 0:
            # Capped first: tanh would turn a masked -inf into -cap.
            _cap_scores(scores, ROWS, lo, hi, soft_cap)
            cap = soft_cap - soft_cap  # none left to apply, in its own type
        for i in range(ROWS):
            for t in range(lo, starts[i]):
                scores[i, t] = -np.inf
            for t in range(ends[i], hi):
                scores[i, t] = -np.inf
    _tile_weights(scores, ROWS, lo, hi, cap, row_max, row_sum, acc, r)
    if masked:
        # A masked slot's weight came out as exp(-87), not 0 (the
        # exponential's floor): make it exact, whatever its value row holds.
        for i in range(ROWS):
            for t in range(lo, starts[i]):
                scores[i, t] = np.float32(0.0)
            for t in range(ends[i], hi):
                scores[i, t] = np.float32(0.0)
    pv_tile(scores, values, lo, hi, acc, r, 0, row_sum, ahead, kind_code)  # no scales


@njit(inline="always", cache=True)
def _attend_tiles(
    q_rows: Any, keys: Any, values: Any, lo: Any, hi: Any, pos: Any, rows: Any,
    group: Any, causal: Any, window: Any, sinks: Any, tile_scores: Any,
    scores: Any, row_max: Any, row_sum: Any, acc: Any, soft_cap: Any, pool: Any,
    next_run: Any, kind_code: Any, stream_first: Any, keys_t: Any,
) -> None:  # fmt: skip
    """Fold slots ``lo:hi`` of a block into the `rows` query rows four at a
    time: `_attend_block_group` over the sinks and then the window where the
    four rows' bounds agree (a GQA group's always do, prefill rows of
    different queries away from the causal diagonal) or differ only in
    their window (on the causal diagonal, at a sliding window's edge:
    each row's other slots masked; MHA prefill at block 64 measured
    1.05-1.1x faster on one thread than row by row), else `_attend_rows`
    (with sinks below the window, or a row with no slots; `keys` and
    `values` then float32).  `pos` is the block-relative
    position of row 0's query; the first four rows prefetch the next
    block.  Float32 keys read by several fours are first transposed into
    `keys_t` where the block has whole sixteens (`_attend_block_group`)."""
    transposed = keys_t[:0]  # empty: scores from the keys as stored
    # (Halves read by several fours arrive converted, so `keys` is float32;
    # the head dimension is a multiple of the tiles' 16 channels.)
    columns = rows > ROWS and keys.shape[0] % COLUMN_KEYS == 0
    for r in range(0, rows, ROWS):
        ahead = next_run if r == 0 else -1
        sink_lo, sink_hi, row_lo, row_hi, shared = _shared_bounds(
            lo, hi, pos, r, ROWS, group, causal, window, sinks
        )
        starts = (row_lo, row_lo, row_lo, row_lo)
        ends = (row_hi, row_hi, row_hi, row_hi)
        if not shared:
            shared, start0, start1, start2, start3, end0, end1, end2, end3 = (
                _edge_bounds(lo, hi, pos, r, group, causal, window, sinks)
            )
            starts = (start0, start1, start2, start3)
            ends = (end0, end1, end2, end3)
            row_lo, row_hi = start0, end3
        if not shared:
            _attend_rows(
                q_rows, keys, values, lo, hi, pos, r, ROWS, group, causal, window,
                sinks, scores, row_max, row_sum, acc, soft_cap, stream_first,
            )  # fmt: skip
            continue
        if columns and transposed.size == 0:
            _transpose_keys(keys, lo, hi, keys_t)
            transposed = keys_t
        if sink_lo < sink_hi:  # the sinks: every row alike
            _attend_block_group(
                q_rows, keys, values, sink_lo, sink_hi, tile_scores, row_max,
                row_sum, acc, r, soft_cap, pool, ahead, kind_code, transposed,
                (sink_lo, sink_lo, sink_lo, sink_lo),
                (sink_hi, sink_hi, sink_hi, sink_hi),
            )  # fmt: skip
        if row_lo < row_hi:
            _attend_block_group(
                q_rows, keys, values, row_lo, row_hi, tile_scores, row_max,
                row_sum, acc, r, soft_cap, pool, ahead, kind_code, transposed,
                starts, ends,
            )  # fmt: skip


@njit(inline="always", cache=True)
def _attend_rows(
    q_rows: Any, keys: Any, values: Any, lo: Any, hi: Any, pos: Any, r: Any,
    count: Any, group: Any, causal: Any, window: Any, sinks: Any, scores: Any,
    row_max: Any, row_sum: Any, acc: Any, soft_cap: Any, stream_first: Any,
) -> None:  # fmt: skip
    """Fold slots ``lo:hi`` of a float32 block (a decoded one, or the pool's)
    into query rows ``r:r+count`` one by one, each within its own bounds;
    `pos` is the block-relative position of the query of row 0 (row i's is
    ``pos + i // group``).  With `stream_first`, row 0 reads the block
    as one stream (`_attend_block_streaming`: the block is still in
    memory), the others four value rows per pass."""
    for i in range(r, r + count):
        sink_lo, sink_hi, row_lo, row_hi = _row_bounds(
            lo, hi, pos + i // group, causal, window, sinks
        )
        # The sinks (if any), then the window: two ranges of one online
        # softmax.
        for part_lo, part_hi in ((sink_lo, sink_hi), (row_lo, row_hi)):
            if part_lo >= part_hi:
                continue
            if i == 0 and stream_first:
                _attend_block_streaming_apart(
                    q_rows, keys, values, part_lo, part_hi, scores, row_max,
                    row_sum, acc, i, soft_cap, F32_CODE, keys, -1,
                )  # fmt: skip
            else:
                _attend_block_unrolled(
                    q_rows, keys, values, part_lo, part_hi, scores, row_max,
                    row_sum, acc, i, soft_cap,
                )  # fmt: skip


@njit(inline="always", cache=True)
def _row_bounds(
    lo: Any, hi: Any, pos: Any, causal: Any, window: Any, sinks: Any
) -> Any:
    """The slots of ``lo:hi`` that a query at block-relative position `pos`
    attends, as two ranges in slot order: ``sink_lo:sink_hi``, the attention
    sinks below the window (`sinks` is block-relative too), then
    ``row_lo:row_hi`` (each empty when lo >= hi)."""
    row_lo = lo
    row_hi = hi
    if causal:
        row_hi = min(row_hi, pos + 1)
    if window > 0:
        row_lo = max(row_lo, pos - window + 1)
    sink_hi = min(hi, sinks, row_lo, pos + 1)
    return lo, sink_hi, row_lo, row_hi


@njit(inline="always", cache=True)
def _shared_bounds(
    lo: Any, hi: Any, pos: Any, r: Any, count: Any, group: Any, causal: Any,
    window: Any, sinks: Any,
) -> Any:  # fmt: skip
    """The `_row_bounds` of row `r` (its query at block-relative position
    ``pos + r // group``), then whether rows ``r:r+count`` all share them:
    rows are in query order, so it is enough that the last one does.  (A
    flat tuple: Numba's parallel array analysis fails on nested ones.)"""
    sink_lo, sink_hi, row_lo, row_hi = _row_bounds(
        lo, hi, pos + r // group, causal, window, sinks
    )
    last = _row_bounds(lo, hi, pos + (r + count - 1) // group, causal, window, sinks)
    shared = (sink_lo, sink_hi, row_lo, row_hi) == last
    return sink_lo, sink_hi, row_lo, row_hi, shared


@njit(inline="always", cache=True)
def _edge_bounds(
    lo: Any, hi: Any, pos: Any, r: Any, group: Any, causal: Any, window: Any,
    sinks: Any,
) -> Any:  # fmt: skip
    """Whether rows ``r:r+4`` can tile with masks: no sinks below the
    window for any of them and each row's slots non-empty; then each row's
    start and end (rows are in query order, so starts and ends only grow:
    the union is row 0's start to row 3's end), as a flat tuple."""
    first = _row_bounds(lo, hi, pos + r // group, causal, window, sinks)
    second = _row_bounds(lo, hi, pos + (r + 1) // group, causal, window, sinks)
    third = _row_bounds(lo, hi, pos + (r + 2) // group, causal, window, sinks)
    last = _row_bounds(lo, hi, pos + (r + 3) // group, causal, window, sinks)
    # _row_bounds: (lo, sink_hi, row_lo, row_hi); no sinks: sink_hi <= lo
    # (it grows with the query, so the last row's decides).
    tiles = (
        last[1] <= lo
        and first[2] < first[3]
        and second[2] < second[3]
        and third[2] < third[3]
        and last[2] < last[3]
    )
    return (
        tiles,
        first[2], second[2], third[2], last[2],
        first[3], second[3], third[3], last[3],
    )  # fmt: skip


@njit(inline="always", cache=True)
def _record_block_mass(
    rows: Any,
    row_max: Any,
    row_sum: Any,
    max_before: Any,
    sum_before: Any,
    contrib: Any,
    contrib_max: Any,
    logical: Any,
) -> None:
    """What block `logical` added to each row's running softmax sum, and
    the running max it is relative to: the sum's growth past the old sum
    rescaled to the new max.  (Rounding makes it inexact by ~1 ulp of the
    row's sum: heavy-hitter ranking needs no more.)"""
    for r in range(rows):
        if row_max[r] == -np.inf:
            continue
        added = row_sum[r]
        if sum_before[r] > 0:
            added -= sum_before[r] * np.float32(math.exp(max_before[r] - row_max[r]))
        contrib[r, logical] = max(added, np.float32(0.0))
        contrib_max[r, logical] = row_max[r]


_LOWEST = np.float32(-3.4028235e38)


@njit(inline="always", cache=True)
def _masked_ranges(
    lo: Any, hi: Any, start: Any, stop: Any, pos: Any, causal: Any, window: Any,
    sinks: Any,
) -> Any:  # fmt: skip
    """The slots of ``start:stop`` a query at block-relative `pos` does not
    attend (`_row_bounds` of ``lo:hi``), as three ranges in slot order:
    below its sinks, between its sinks and its window, past its window."""
    sink_lo, sink_hi, row_lo, row_hi = _row_bounds(lo, hi, pos, causal, window, sinks)
    if sink_hi <= sink_lo:  # no sinks: the window alone
        sink_lo = sink_hi = row_lo
    row_hi = max(row_hi, row_lo)
    # In slot order; clamped, as a window may start past the block and a
    # causal row end before it.
    sink_lo, sink_hi, row_lo, row_hi = (
        min(max(sink_lo, start), stop),
        min(max(sink_hi, start), stop),
        min(max(row_lo, start), stop),
        min(max(row_hi, start), stop),
    )
    return start, sink_lo, sink_hi, row_lo, row_hi, stop


@njit(inline="always", cache=True)
def _fill_masked(
    scores: Any, i: Any, value: Any, ranges: Any
) -> None:  # fmt: skip
    a0, a1, b0, b1, c0, c1 = ranges
    for t in range(a0, a1):
        scores[i, t] = value
    for t in range(b0, b1):
        scores[i, t] = value
    for t in range(c0, c1):
        scores[i, t] = value


@njit(inline="always", cache=True)
def _amx_pairs(
    keys: Any, values: Any, lo: Any, hi: Any, start: Any, stop: Any,
    offset: Any, kind_code: Any, key_scratch: Any, value_scratch: Any,
    planes: Any, key_pairs: Any, value_pairs: Any,
) -> None:  # fmt: skip
    """Slots ``start:stop`` of a stored block as the AMX tiles' operands
    (`amx_attention.key_pairs`, `value_pairs`), at token `offset` (even) of
    the span they hold; values outside ``lo:hi`` as zeros.  bf16 is the
    tiles' own format.  An f16 element (11 significant bits) is exactly the
    sum of two bf16 (8 bits, then the rest): converted to float32 once into
    the scratch, split into `planes` (uint16 ``[K/V, high/low, tokens,
    D]``), each plane into its pairs (``key_pairs[1]``, ``value_pairs[1]``:
    the low ones)."""
    if kind_code != F16_CODE:
        amx_attention.key_pairs(keys, start, stop, key_pairs[0, :, offset:])
        amx_attention.value_pairs(
            values, start, stop, lo, hi, value_pairs[0, offset // 2 :]
        )
        return
    head_dim = keys.shape[1]
    count = stop - start
    for which, stored, scratch in ((0, keys, key_scratch), (1, values, value_scratch)):
        wide = block_as_f32(stored, scratch, kind_code, start, stop)
        amx_attention.split_bf16(  # pyright: ignore[reportCallIssue]
            wide[start:stop], count, 0, head_dim, planes[which, 0, start:stop],
            planes[which, 1, start:stop],
        )  # fmt: skip
    for part in range(2):
        amx_attention.key_pairs(
            planes[0, part], start, stop, key_pairs[part, :, offset:]
        )
        amx_attention.value_pairs(
            planes[1, part], start, stop, lo, hi, value_pairs[part, offset // 2 :]
        )


@njit(fastmath=_REORDER_SUMS, error_model="numpy", cache=True)
def _attend_blocks_amx(
    q_high: Any, q_low: Any, with_low: Any, layer_pool: Any, table_row: Any,
    first: Any, count: Any, h: Any, lo: Any, hi: Any, pos: Any, rows: Any,
    group: Any, causal: Any, window: Any, sinks: Any, soft_cap: Any,
    kind_code: Any, key_scratch: Any, value_scratch: Any, planes: Any,
    key_pairs: Any, value_pairs: Any, scores: Any, p_high: Any, p_low: Any,
    row_max: Any, row_sum: Any, acc: Any,
) -> None:  # fmt: skip
    """Fold slots ``lo:hi`` of a span of `count` logically consecutive bf16
    or f16 blocks (``table_row[first:first + count]``, kv head `h`; slots
    and `pos`, `sinks` counted from the span's first) into the
    online-softmax states of the `rows` query rows (`q_high` + `q_low`:
    their bf16 parts, padded to sixteens, as are the states) through the AMX
    tiles of `amx_attention`, sixteen rows at a time, each within its own
    bounds (`_row_bounds`: causal diagonal, window, sinks, any mix).  Small
    blocks go up to `amx_attention.SPAN_TOKENS` at a time, so every product
    has four tiles to fill.

    The blocks' keys and values go into `key_pairs`/`value_pairs` first
    (`_amx_pairs`: ``[planes, ...]``, a second plane for f16).  The tiles
    cover ``lo:hi`` widened to whole steps of `amx_attention.PAIR_TOKENS`
    (16 tokens are padded with zeros to 32); each row's slots outside its
    bounds are scored with the others, then, after the soft cap if any, set
    to -inf before its max and to exactly 0 after its exponentials.  A row
    with no slot in the span shifts by the lowest float instead of -inf, so
    its weights come out 0, not NaN."""
    block_size = pool_block_size(layer_pool)
    tokens = amx_attention.PAIR_TOKENS
    start = lo - lo % tokens
    stop = min(count * block_size, hi + (-hi) % tokens)
    padded = stop + (-stop) % tokens
    for k in range(count):
        base = k * block_size
        block = table_row[first + k]
        _amx_pairs(
            stored_block(layer_pool, block, h, KEY),
            stored_block(layer_pool, block, h, VALUE),
            lo - base, hi - base, max(start - base, 0),
            min(stop - base, block_size), base, kind_code, key_scratch,
            value_scratch, planes, key_pairs, value_pairs,
        )  # fmt: skip
    if padded > stop:  # zeros past the span (an earlier one may have been longer)
        value_pairs[:, stop // 2 : padded // 2] = 0
        p_high[:, stop:padded] = 0
        p_low[:, stop:padded] = 0
    low = key_pairs.shape[0] > 1
    for r in range(0, rows, amx_attention.ROWS):
        amx_attention.scores(
            q_high, q_low, with_low, r, key_pairs[0], key_pairs[-1], low, start,
            stop, scores,
        )  # fmt: skip
        for i in range(0, amx_attention.ROWS, ROWS):
            four = scores[i : i + ROWS]
            if soft_cap > 0:
                _cap_scores(four, ROWS, start, stop, soft_cap)
            for j in range(i, i + ROWS):
                ranges = _masked_ranges(
                    lo, hi, start, stop, pos + (r + j) // group, causal, window,
                    sinks,
                )  # fmt: skip
                _fill_masked(scores, j, -np.inf, ranges)
            max0, max1, max2, max3 = row_maxima(  # pyright: ignore[reportCallIssue]
                four, start, stop
            )
            shifts = (
                max(_rescale_state(row_max, row_sum, acc, r + i, max0), _LOWEST),
                max(_rescale_state(row_max, row_sum, acc, r + i + 1, max1), _LOWEST),
                max(_rescale_state(row_max, row_sum, acc, r + i + 2, max2), _LOWEST),
                max(_rescale_state(row_max, row_sum, acc, r + i + 3, max3), _LOWEST),
            )
            sum0, sum1, sum2, sum3 = row_exponentials(  # pyright: ignore[reportCallIssue]
                four, start, stop, shifts
            )
            row_sum[r + i] += sum0
            row_sum[r + i + 1] += sum1
            row_sum[r + i + 2] += sum2
            row_sum[r + i + 3] += sum3
            for j in range(i, i + ROWS):
                ranges = _masked_ranges(
                    lo, hi, start, stop, pos + (r + j) // group, causal, window,
                    sinks,
                )  # fmt: skip
                _fill_masked(scores, j, np.float32(0.0), ranges)
        amx_attention.split_bf16(  # pyright: ignore[reportCallIssue]
            scores, amx_attention.ROWS, start, stop, p_high, p_low
        )
        amx_attention.accumulate(
            p_high, p_low, value_pairs[0], value_pairs[-1], low, start, padded,
            acc, r,
        )  # fmt: skip


# A quantized pool (`llmir.runtime.quantization`) is uint8 ``[blocks, H,
# block_size, row_bytes]`` per layer, K and V in one row: its codes are read
# as they are by the vector tiles (`attend_codes`), or, in layouts the tiles
# do not fit, decoded once into float32 scratch (`decode_codes`); the float
# pools' blocks are read in place or decoded as above.


def stored_block(
    pool: Any, block: int, h: int, which: int
) -> Any:  # pragma: no cover - replaced by the overload inside @njit code
    """The stored keys (`which` = KEY) or values of one (block, head)."""
    raise NotImplementedError("stored_block is only callable from @njit code")


@overload(stored_block, inline="always")
def _stored_block_impl(pool: Any, block: Any, h: Any, which: Any):
    if pool.ndim == 4:

        def quantized_rows(pool: Any, block: Any, h: Any, which: Any):
            return pool[block, h]

        return quantized_rows

    def half_run(pool: Any, block: Any, h: Any, which: Any):
        return pool[block, h, which]

    return half_run


def pool_block_size(pool: Any) -> int:  # pragma: no cover - njit only
    raise NotImplementedError("pool_block_size is only callable from @njit code")


@overload(pool_block_size, inline="always")
def _pool_block_size_impl(pool: Any):
    axis = layer_block_size_axis(quantized=pool.ndim == 4)

    def size(pool: Any):
        return pool.shape[axis]

    return size


def read_block_meta(
    stored: Any, lo: int, hi: int, key_meta: Any, value_meta: Any, kind_code: int,
    meta_row: int,
) -> None:  # pragma: no cover - replaced by the overload inside @njit code  # fmt: skip
    """A quantized block's key scales and offsets per channel into
    ``key_meta[0]``/``key_meta[1]``, and those of the values of slots
    ``lo:hi`` into `value_meta` (`_read_value_meta`); nothing for float
    pools."""
    raise NotImplementedError("read_block_meta is only callable from @njit code")


@overload(read_block_meta, inline="always")
def _read_block_meta_impl(
    stored: Any, lo: Any, hi: Any, key_meta: Any, value_meta: Any, kind_code: Any,
    meta_row: Any,
):  # fmt: skip
    if stored.dtype != types.uint8:

        def nothing(
            stored: Any, lo: Any, hi: Any, key_meta: Any, value_meta: Any,
            kind_code: Any, meta_row: Any,
        ):  # fmt: skip
            return None

        return nothing

    def read(
        stored: Any, lo: Any, hi: Any, key_meta: Any, value_meta: Any,
        kind_code: Any, meta_row: Any,
    ):  # fmt: skip
        symmetric = kind_code == I8_CODE
        head_dim = key_meta.shape[1]
        meta_col = head_dim if symmetric else head_dim // 2
        load_key_meta(stored, meta_col, meta_row, symmetric, key_meta[0], key_meta[1])
        _read_value_meta(stored, lo, hi, value_meta, head_dim, kind_code, meta_row)

    return read


def decode_codes(
    stored: Any, lo: int, hi: int, meta: Any, keys: Any, values: Any,
    kind_code: int, meta_row: int,
) -> None:  # pragma: no cover - replaced by the overload inside @njit code  # fmt: skip
    """Slots ``lo:hi`` of a quantized block decoded into the float32
    scratch `keys`/`values` (its key scales already in ``meta``); nothing
    for float pools."""
    raise NotImplementedError("decode_codes is only callable from @njit code")


@overload(decode_codes, inline="always")
def _decode_codes_impl(
    stored: Any, lo: Any, hi: Any, meta: Any, keys: Any, values: Any,
    kind_code: Any, meta_row: Any,
):  # fmt: skip
    if stored.dtype != types.uint8:

        def nothing(
            stored: Any, lo: Any, hi: Any, meta: Any, keys: Any, values: Any,
            kind_code: Any, meta_row: Any,
        ):  # fmt: skip
            return None

        return nothing

    def decode(
        stored: Any, lo: Any, hi: Any, meta: Any, keys: Any, values: Any,
        kind_code: Any, meta_row: Any,
    ):  # fmt: skip
        if kind_code == I8_CODE:
            decode_block_rows(
                stored, lo, hi, meta[0], meta[1], keys, values, 8, keys.shape[1],
                meta_row,
            )  # fmt: skip
        else:
            decode_block_rows(
                stored, lo, hi, meta[0], meta[1], keys, values, 4, I4_GROUP,
                meta_row,
            )  # fmt: skip

    return decode


@njit(inline="always", cache=True)
def _prefetch_rows(
    pool: Any, next_run: Any, t: Any, count: Any, row_bytes: Any
) -> None:
    """Prefetch rows ``t:t+count`` of the quantized block whose rows start
    at byte `next_run` of the flattened uint8 `pool` (-1: none)."""
    if next_run < 0:
        return
    start = next_run + t * row_bytes
    for offset in range(start, start + count * row_bytes, _CACHE_LINE_BYTES):
        prefetch_line(pool, offset)  # pyright: ignore[reportCallIssue]


@njit(inline="always", cache=True)
def _read_value_meta(
    block: Any, lo: Any, hi: Any, value_meta: Any, head_dim: Any, kind_code: Any,
    meta_row: Any,
) -> None:  # fmt: skip
    """The value scales and offsets of slots ``lo:hi`` of a quantized block,
    slot ``t``'s from ``value_meta[2 * groups * t]`` on, a (scale, offset)
    pair per group (i8: one group, the whole row): the order of the row's
    own entries, so an i4 row converts in one stream of halves."""
    if kind_code == I8_CODE:
        v_meta = 2 * head_dim + meta_row
        halves_to_f32(block, lo, hi, v_meta, 1, value_meta, 2 * lo, 2, 1)
        for t in range(lo, hi):
            value_meta[2 * t + 1] = np.float32(-128.0) * value_meta[2 * t]
        return
    entries = 2 * (head_dim // I4_GROUP)
    v_meta = head_dim + meta_row
    if entries in (8, 16):
        # D = 64 or 128: the row's pairs in one load.
        rows_to_f32(
            block, lo, hi, v_meta, value_meta, value_meta, entries * lo, entries,
            False,
        )  # fmt: skip
        return
    halves_to_f32(block, lo, hi, v_meta, 1, value_meta, entries * lo, entries, entries)


@njit(inline="always", cache=True)
def _following_block(
    block_table: Any, b: Any, logical: Any, last_block: Any, block_size: Any,
    sink_end: Any, window_block: Any,
) -> Any:  # fmt: skip
    """The logical block that sequence `b`'s walk reads after `logical` (it
    jumps from the sink blocks to the window's first) and its pool block:
    -1 past `last_block` or at a hole."""
    following = logical + 1
    if following * block_size >= sink_end:
        following = max(following, window_block)
    if following > last_block:
        return following, -1
    return following, block_table[b, following]


@njit(inline="always", fastmath=_REORDER_SUMS, error_model="numpy", cache=True)
def _attend_codes_tile(
    q_rows: Any, block: Any, lo: Any, hi: Any, r: Any, rows: Any, scores: Any,
    q_scaled: Any, biases: Any, value_meta: Any, row_max: Any, row_sum: Any,
    acc: Any, soft_cap: Any, key_meta: Any, kind_code: Any, meta_row: Any,
    pool: Any, next_run: Any, words: Any, vnni_codes: Any,
) -> None:  # fmt: skip
    """Fold slots ``lo:hi`` (non-empty) of a quantized block into the
    online-softmax states of query rows ``r:r+rows`` (`rows` 1 or 4, sharing
    those bounds), reading the codes through the vector tiles of
    `llmir.runtime.cpu.simd` and decoding none into memory.

    A key decodes as ``code * scale[c] + offset[c]`` per channel (the
    block's `key_meta`), so a logit is ``(q * scale) . code + q . offset``:
    the scales fold into the query rows once per block.  A value decodes as
    ``code * scale[t, g] + offset[t, g]`` per token and group
    (`value_meta`), which the ``P V`` tile does in registers, once for all
    its rows.  A single i8 row folds its one value scale per token into the
    weight instead, ``p * scale``, adding ``sum p * offset`` once per chunk
    (a hot 64-token block 6% faster); for i4 that measured slower (the
    weights of eight groups per token cost more than the tile).

    The score tiles start at a multiple of their width (8 keys for one row,
    2 for four), reading whole rows of the block below `lo` and above `hi`
    whose scores are never used; the caller sees that the block size is a
    multiple of 8.  The next block's rows are prefetched as the scores go.

    Inlined (into `_attend_code_tiles`, itself inlined into the kernel), as
    `_attend_block_streaming` is: out of line, the hot GQA 32/8 decode at
    block 16 took 57.6-62.1 ns a token and kv head in i4 and 54.5-57.4 in
    i8, inlined 52.7 and 51.7-56.7.

    i8 rows take the integer tiles of `vnni` instead where `vnni_codes`
    (the kernel's compile-time flag) allows and the head dimension fits
    them (a single row: below `vnni.SINGLE_ROW_BLOCKS`): the query rows
    scaled and rounded to integers once per block into `words`, whose
    logits come complete (no bias), four keys at a time (a single row:
    eight), and ``P V`` over the span's integer weights.
    """
    head_dim = acc.shape[1]
    row_bytes = block.shape[1]
    # Four rows over i8 codes on the integer dot products (`vnni`): the
    # scaled query rows in 15-bit integers, their logits complete (no bias).
    integer_tiles = (
        vnni_codes
        and kind_code == I8_CODE
        and head_dim <= vnni.MAX_HEAD_DIM
        and (rows > 1 or block.shape[0] < vnni.SINGLE_ROW_BLOCKS)
    )
    width = 8 if rows == 1 else (vnni.KEYS if integer_tiles else 2)
    if integer_tiles and rows == 1:
        quantize_query_row(q_rows, r, key_meta[0], words)  # pyright: ignore[reportCallIssue]
    elif integer_tiles:
        quantize_query_rows(q_rows, r, key_meta[0], words)  # pyright: ignore[reportCallIssue]
    elif kind_code == I8_CODE:
        scale_query_rows(q_rows, r, rows, key_meta[0], key_meta[1], q_scaled, biases)  # pyright: ignore[reportCallIssue]
    else:
        # i4 keeps the Numba loop: through the intrinsic its hot decode at
        # block 16 measured slower (MHA 24.2-24.7 -> 27.5-29.5 ns a token,
        # GQA 43.1-44.4 -> 45.6-47.0), for a reason not found; i8 faster.
        for i in range(rows):
            bias = np.float32(0.0)
            for c in range(head_dim):
                q = q_rows[r + i, c]
                q_scaled[i, c] = q * key_meta[0, c]
                bias += q * key_meta[1, c]
            biases[i] = bias
    t = lo - lo % width
    while t < hi:
        _prefetch_rows(pool, next_run, t, width, row_bytes)
        if integer_tiles and rows == 1:
            qk_codes_row(words, block, t, scores, head_dim)  # pyright: ignore[reportCallIssue]
        elif integer_tiles:
            qk_codes(words, block, t, scores, head_dim)  # pyright: ignore[reportCallIssue]
        elif rows == 1:
            qk_row(q_scaled, 0, block, t, scores, 0, kind_code)
        else:
            qk_tile(q_scaled, 0, block, t, scores, 0, kind_code)
        t += width
    if not integer_tiles:
        for i in range(rows):
            bias = biases[i]
            for t in range(lo, hi):
                scores[i, np.uintp(t)] += bias
    _tile_weights(scores, rows, lo, hi, soft_cap, row_max, row_sum, acc, r)
    v_codes = (head_dim if kind_code == I8_CODE else head_dim // 2) + meta_row
    if integer_tiles:
        vnni_pv_codes(scores, block, lo, hi, acc, r, v_codes, value_meta, words, rows)
    elif rows == 1:
        pv_row(scores, block, lo, hi, acc, r, v_codes, value_meta, 0, kind_code)
    else:
        pv_tile(scores, block, lo, hi, acc, r, v_codes, value_meta, 0, kind_code)


def attend_codes(
    q_rows: Any, block: Any, lo: int, hi: int, r: int, rows: int, scores: Any,
    q_scaled: Any, biases: Any, value_meta: Any, row_max: Any, row_sum: Any,
    acc: Any, soft_cap: Any, key_meta: Any, kind_code: int, meta_row: int,
    pool: Any, next_run: int, words: Any, vnni_codes: bool,
) -> None:  # pragma: no cover - replaced by the overload inside @njit code  # fmt: skip
    """`_attend_codes_tile` for a quantized pool, nothing for a float one
    (so a float kernel compiles none of it)."""
    raise NotImplementedError("attend_codes is only callable from @njit code")


@overload(attend_codes, inline="always")
def _attend_codes_impl(
    q_rows: Any, block: Any, lo: Any, hi: Any, r: Any, rows: Any, scores: Any,
    q_scaled: Any, biases: Any, value_meta: Any, row_max: Any, row_sum: Any,
    acc: Any, soft_cap: Any, key_meta: Any, kind_code: Any, meta_row: Any,
    pool: Any, next_run: Any, words: Any, vnni_codes: Any,
):  # fmt: skip
    if block.dtype != types.uint8:

        def nothing(
            q_rows: Any, block: Any, lo: Any, hi: Any, r: Any, rows: Any,
            scores: Any, q_scaled: Any, biases: Any, value_meta: Any,
            row_max: Any, row_sum: Any, acc: Any, soft_cap: Any, key_meta: Any,
            kind_code: Any, meta_row: Any, pool: Any, next_run: Any, words: Any,
            vnni_codes: Any,
        ):  # fmt: skip
            return None

        return nothing

    def attend(
        q_rows: Any, block: Any, lo: Any, hi: Any, r: Any, rows: Any, scores: Any,
        q_scaled: Any, biases: Any, value_meta: Any, row_max: Any, row_sum: Any,
        acc: Any, soft_cap: Any, key_meta: Any, kind_code: Any, meta_row: Any,
        pool: Any, next_run: Any, words: Any, vnni_codes: Any,
    ):  # fmt: skip
        _attend_codes_tile(
            q_rows, block, lo, hi, r, rows, scores, q_scaled, biases, value_meta,
            row_max, row_sum, acc, soft_cap, key_meta, kind_code, meta_row, pool,
            next_run, words, vnni_codes,
        )  # fmt: skip

    return attend


@njit(inline="always", cache=True)
def _attend_code_tiles(
    q_rows: Any, block: Any, lo: Any, hi: Any, pos: Any, rows: Any, group: Any,
    causal: Any, window: Any, sinks: Any, tile_scores: Any, scores: Any,
    q_scaled: Any, biases: Any, value_meta: Any, row_max: Any, row_sum: Any,
    acc: Any, soft_cap: Any, key_meta: Any, kind_code: Any, meta_row: Any,
    pool: Any, next_run: Any, keys: Any, values: Any, words: Any, vnni_codes: Any,
) -> None:  # fmt: skip
    """`_attend_tiles` for a quantized block read as codes (`attend_codes`),
    one row (`rows` 1) or four at a time; four rows whose bounds differ
    decode the block into `keys` and `values` (float32 scratch) once and go
    one by one."""
    decoded = False
    step = 1 if rows == 1 else ROWS
    for r in range(0, rows, step):
        ahead = next_run if r == 0 else -1
        sink_lo, sink_hi, row_lo, row_hi, shared = _shared_bounds(
            lo, hi, pos, r, step, group, causal, window, sinks
        )
        if not shared:
            if not decoded:
                decode_codes(block, lo, hi, key_meta, keys, values, kind_code, meta_row)
                decoded = True
            _attend_rows(
                q_rows, keys, values, lo, hi, pos, r, step, group, causal, window,
                sinks, scores, row_max, row_sum, acc, soft_cap, False,
            )  # fmt: skip
            continue
        for part_lo, part_hi in ((sink_lo, sink_hi), (row_lo, row_hi)):
            if part_lo < part_hi:
                attend_codes(
                    q_rows, block, part_lo, part_hi, r, step, tile_scores, q_scaled,
                    biases, value_meta, row_max, row_sum, acc, soft_cap, key_meta,
                    kind_code, meta_row, pool, ahead, words, vnni_codes,
                )  # fmt: skip


@cache
def attention_kernel(
    kind_code: int, with_mass: bool = False, use_amx: bool = False,
    use_vnni: bool = False,
) -> Any:  # fmt: skip
    """The paged-attention kernel of one element type, compiled on first use.

    The element-type code is a constant of each kernel (a closure value,
    which Numba compiles and caches per value), so a kernel holds only its
    own type's conversions: compiling the half-precision kernel took ~26 s
    with the f16 and bf16 paths together and about half that apart.  So is
    `with_mass` (whether the kernel records each block's attention mass, for
    heavy-hitter pruning): Numba prunes the branches on it, and a cache that
    never asks for the mass never compiles that code.  `use_amx` (f16 and
    bf16, where `amx.enabled`) sends the blocks of items with 16 rows or more
    (f16: 32) through the AMX tiles (`_attend_blocks_amx`).  `use_vnni` (i8,
    where `vnni.enabled`) sends fours of rows through the integer tiles of
    `vnni`.
    """

    quantized = kind_code in (I8_CODE, I4_CODE)
    use_amx = use_amx and kind_code in (F16_CODE, BF16_CODE)
    vnni_codes = use_vnni and kind_code == I8_CODE

    @njit(parallel=True, fastmath=_REORDER_SUMS, cache=True)
    def kernel(
        query: Any,  # f32 [batch, Tq, Hq, D]
        layer_pool: Any,  # [num_blocks, H, 2, block_size, D], f32 or uint16
        block_table: Any,  # int32 [batch, max_blocks]
        seq_lens: Any,  # int32 [batch]
        scale: Any,
        causal: Any,
        window: Any,  # 0: no sliding window
        sinks: Any,  # attention sinks beside the window; 0: none
        soft_cap: Any,  # 0: no soft cap
        q_tile: Any,
        partition_size: Any,  # tokens, a multiple of block_size
        num_partitions: Any,
        out: Any,  # f32 [batch, Tq, Hq, D]
        part_max: Any,  # f32 [batch, H, q_tiles, partitions, q_tile * group]
        part_sum: Any,  # same
        part_acc: Any,  # f32 [..., q_tile * group, D]
        block_mass: Any,  # f32 [batch, H, width], or empty: not wanted
        quant: Any,  # int64 [K metadata bytes per row] (quantized pools)
    ) -> None:
        batch, tq, hq, head_dim = query.shape
        num_heads = layer_pool.shape[1]
        block_size = pool_block_size(layer_pool)
        group = hq // num_heads
        q_tiles = (tq + q_tile - 1) // q_tile
        max_rows = q_tile * group
        # Elements of one (block, head) run, K then V (a quantized run: its
        # rows' bytes).
        run_length = layer_pool.size // (layer_pool.shape[0] * num_heads)
        line = _CACHE_LINE_BYTES // layer_pool.itemsize
        items = batch * num_heads * q_tiles * num_partitions
        # Block mass (`with_mass`): one partition and one query tile per
        # (sequence, head) (the launcher sees to it), so each item owns
        # block_mass[b, h].
        width = block_table.shape[1]
        # Quantized blocks go through the code tiles when their chunks (32
        # channels for one row) and their score tiles (8 slots) fit.
        codes_tiled = head_dim % 32 == 0 and block_size % 8 == 0
        # A half-precision MHA row likewise (`_attend_block_row`).
        row_tiles = codes_tiled and kind_code in (F16_CODE, BF16_CODE)
        value_groups = head_dim // I4_GROUP if kind_code == I4_CODE else 1
        amx_shaped = use_amx and amx_attention.supports(head_dim, block_size)
        amx_planes = 2 if kind_code == F16_CODE else 1
        # Rows an item needs for the tiles to pay for turning its blocks
        # into pairs.  Decode, batch 8, 2048 tokens, bf16: GQA 32/2 (16
        # rows) 1.7x faster at block 64; 64/8 (8 rows) level at block 64,
        # 1.2x slower at 16; f16 64/8 2.4x slower at 64 (its split costs
        # more).
        amx_min_rows = 32 if kind_code == F16_CODE else amx_attention.ROWS
        # The AMX path's states cover its rows padded to whole sixteens.
        tile_rows = amx_attention.ROWS
        state_rows = q_tile * group
        if use_amx:
            state_rows = (state_rows + tile_rows - 1) // tile_rows * tile_rows

        for item in prange(items):
            part = item % num_partitions
            rest = item // num_partitions
            tile = rest % q_tiles
            rest //= q_tiles
            h = rest % num_heads
            b = rest // num_heads

            seq_len = seq_lens[b]
            q0 = tile * q_tile
            nq = min(q_tile, tq - q0)
            rows = nq * group
            first_pos = seq_len - tq + q0  # position of the tile's first query

            # The context slice this item can touch: its partition, cut to what
            # the tile's queries may see.
            t_begin = part * partition_size
            t_end = min(seq_len, t_begin + partition_size)
            if causal:
                t_end = min(t_end, first_pos + nq)
            # Tokens from `window_begin` on may be in some row's window; below
            # it only the sinks are read.  Blocks wholly between the two are
            # never touched: a pruned sequence has holes there.
            window_begin = 0
            if window > 0:
                window_begin = first_pos - window + 1
            sink_end = min(sinks, window_begin)
            if sink_end <= t_begin:
                t_begin = max(t_begin, window_begin)

            q_rows = np.empty((max_rows, head_dim), dtype=np.float32)
            for i in range(nq):
                for g in range(group):
                    for d in range(head_dim):
                        q_rows[i * group + g, d] = (
                            query[b, q0 + i, h * group + g, d] * scale
                        )
            row_max = np.full(state_rows, -np.inf, dtype=np.float32)
            row_sum = np.zeros(state_rows, dtype=np.float32)
            acc = np.zeros((state_rows, head_dim), dtype=np.float32)
            amx_item = amx_shaped and rows >= amx_min_rows
            amx_rows = state_rows if amx_item else 0
            amx_tokens = 0
            span_blocks = 1
            if amx_item:
                # Blocks per span (one for the block mass, recorded per block).
                if not with_mass:
                    span_blocks = max(1, amx_attention.SPAN_TOKENS // block_size)
                amx_tokens = max(span_blocks * block_size, amx_attention.PAIR_TOKENS)
            q_high = np.zeros((amx_rows, head_dim), dtype=np.uint16)
            q_low = np.zeros((amx_rows, head_dim), dtype=np.uint16)
            key_pairs = np.empty(
                (amx_planes, head_dim // 2, amx_tokens), dtype=np.uint32
            )
            value_pairs = np.zeros(
                (amx_planes, amx_tokens // 2, head_dim), dtype=np.uint32
            )
            planes = np.empty(
                (2, 2, block_size if amx_planes > 1 else 0, head_dim),
                dtype=np.uint16,
            )
            amx_scores = np.empty((tile_rows, amx_tokens), dtype=np.float32)
            p_high = np.zeros((tile_rows, amx_tokens), dtype=np.uint16)
            p_low = np.zeros((tile_rows, amx_tokens), dtype=np.uint16)
            with_low = False
            if amx_item:
                with_low = amx_attention.split_bf16(  # pyright: ignore[reportCallIssue]
                    q_rows, rows, 0, head_dim, q_high, q_low
                )
                amx_attention.configure()
            scores = np.empty(block_size, dtype=np.float32)
            tile_scores = np.empty((4, block_size), dtype=np.float32)
            key_scratch = np.empty((block_size, head_dim), dtype=np.float32)
            value_scratch = np.empty((block_size, head_dim), dtype=np.float32)
            keys_t = np.empty((head_dim, block_size), dtype=np.float32)
            meta = np.empty((2, head_dim), dtype=np.float32)
            value_meta = np.empty(2 * value_groups * block_size, dtype=np.float32)
            q_scaled = np.empty((ROWS, head_dim), dtype=np.float32)
            words = np.empty(
                (
                    ROWS,
                    max(vnni.SPAN_TOKENS + 16, head_dim + vnni.QUERY_WORDS)
                    if vnni_codes
                    else 0,
                ),
                dtype=np.int16,
            )
            biases = np.empty(ROWS, dtype=np.float32)
            mass_width = width if with_mass else 0
            contrib = np.zeros((max_rows, mass_width), dtype=np.float32)
            contrib_max = np.full((max_rows, mass_width), -np.inf, dtype=np.float32)
            max_before = np.empty(max_rows, dtype=np.float32)
            sum_before = np.empty(max_rows, dtype=np.float32)
            previous = -1  # the last block attended, for its mass

            if t_begin < t_end:
                first_block = t_begin // block_size
                last_block = (t_end - 1) // block_size
                # The first block of the window part: after the sink blocks
                # the walk jumps there.
                window_block = max(first_block, max(window_begin, 0) // block_size)
                logical = first_block - 1
                while logical < last_block:
                    logical += 1  # first: the loop body continues early
                    if logical * block_size >= sink_end and logical < window_block:
                        logical = window_block - 1
                        continue
                    block = block_table[b, logical]
                    if block < 0:
                        continue  # a hole the cache allows (heavy-hitter pruning)
                    if with_mass:
                        if previous >= 0:
                            _record_block_mass(
                                rows, row_max, row_sum, max_before, sum_before,
                                contrib, contrib_max, previous,
                            )  # fmt: skip
                        for r in range(rows):
                            max_before[r] = row_max[r]
                            sum_before[r] = row_sum[r]
                        previous = logical
                    # Blocks are scattered, so the hardware prefetcher loses the
                    # stream at every block boundary: request the first lines of
                    # the next block's K and V while this one is computed, and let
                    # the hardware follow from there.  (Prefetching whole blocks
                    # measured slower at block 64: it floods the miss queues; the
                    # half-precision tile spreads it over the block instead.)
                    next_logical, next_block = _following_block(
                        block_table, b, logical, last_block, block_size, sink_end,
                        window_block,
                    )  # fmt: skip
                    next_run = -1  # first element of the next block's K/V run
                    if next_block >= 0:
                        next_run = (next_block * num_heads + h) * run_length
                        half = run_length // 2
                        lines = min(half, 16 * line)
                        for offset in range(next_run, next_run + lines, line):
                            prefetch_line(layer_pool, offset)  # pyright: ignore[reportCallIssue]
                            prefetch_line(layer_pool, offset + half)
                    # The block after it is prefetched whole as this one is
                    # read (one block's work hides too little of memory's
                    # latency: MHA decode measured 1.2-1.3x faster in f16).
                    _, far_block = _following_block(
                        block_table, b, next_logical, last_block, block_size,
                        sink_end, window_block,
                    )  # fmt: skip
                    far_run = -1
                    if far_block >= 0:
                        far_run = (far_block * num_heads + h) * run_length
                    base = logical * block_size
                    lo = max(t_begin, base) - base
                    hi = min(t_end, base + block_size) - base
                    stored_keys = stored_block(layer_pool, block, h, KEY)
                    stored_values = stored_block(layer_pool, block, h, VALUE)
                    if amx_item:
                        # The blocks that follow this one in the walk, present
                        # and within the span, go with it.
                        count = 1
                        while count < span_blocks and logical + count <= last_block:
                            following = logical + count
                            if (
                                following * block_size >= sink_end
                                and following < window_block
                            ) or block_table[b, following] < 0:
                                break
                            count += 1
                        logical += count - 1
                        span_hi = min(t_end, (logical + 1) * block_size) - base
                        _attend_blocks_amx(
                            q_high, q_low, with_low, layer_pool, block_table[b],
                            logical - count + 1, count, h, lo, span_hi,
                            first_pos - base, rows, group, causal, window,
                            sinks - base, soft_cap, kind_code, key_scratch,
                            value_scratch, planes, key_pairs, value_pairs,
                            amx_scores, p_high, p_low, row_max, row_sum, acc,
                        )  # fmt: skip
                        continue
                    if rows == 1 and not quantized:
                        # One query row (MHA decode): every element is used once,
                        # so read the pool directly, decoding halves on the fly.
                        sink_lo, sink_hi, row_lo, row_hi = _row_bounds(
                            lo, hi, first_pos - base, causal, window, sinks - base
                        )
                        for part_lo, part_hi in ((sink_lo, sink_hi), (row_lo, row_hi)):
                            if part_lo >= part_hi:
                                continue
                            if row_tiles:
                                ahead = 0  # bytes from this block to the far one
                                if far_run >= 0:
                                    run = (block * num_heads + h) * run_length
                                    ahead = (far_run - run) * layer_pool.itemsize
                                _attend_block_row(
                                    q_rows, stored_keys, stored_values, part_lo,
                                    part_hi, tile_scores, row_max, row_sum, acc,
                                    soft_cap, kind_code, ahead,
                                )  # fmt: skip
                            else:
                                _attend_block_streaming(
                                    q_rows, stored_keys, stored_values, part_lo,
                                    part_hi, scores, row_max, row_sum, acc, 0,
                                    soft_cap, kind_code, layer_pool, far_run,
                                )  # fmt: skip
                        continue
                    if quantized:
                        tiled = codes_tiled and (rows == 1 or rows % ROWS == 0)
                        # Value scales only for the tiles: the fallback below
                        # decodes the block with its own.
                        read_block_meta(
                            stored_keys, lo, hi if tiled else lo, meta, value_meta,
                            kind_code, quant[0],
                        )  # fmt: skip
                        if tiled:
                            _attend_code_tiles(
                                q_rows, stored_keys, lo, hi, first_pos - base,
                                rows, group, causal, window, sinks - base,
                                tile_scores, scores, q_scaled, biases, value_meta,
                                row_max, row_sum, acc, soft_cap, meta, kind_code,
                                quant[0], layer_pool, far_run, key_scratch,
                                value_scratch, words, vnni_codes,
                            )  # fmt: skip
                            continue
                    elif rows % ROWS == 0 and head_dim % CHANNELS == 0:
                        # Float rows in fours through the vector tiles, each
                        # four with its own bounds where they agree.
                        _, _, _, _, shared = _shared_bounds(
                            lo, hi, first_pos - base, 0, rows, group, causal,
                            window, sinks - base,
                        )  # fmt: skip
                        if kind_code != F32_CODE and (rows > ROWS or not shared):
                            # Several tiles read the block, or rows one by one
                            # do: convert it once.
                            keys = block_as_f32(
                                stored_keys, key_scratch, kind_code, lo, hi
                            )
                            values = block_as_f32(
                                stored_values, value_scratch, kind_code, lo, hi
                            )
                            _attend_tiles(
                                q_rows, keys, values, lo, hi, first_pos - base,
                                rows, group, causal, window, sinks - base,
                                tile_scores, scores, row_max, row_sum, acc,
                                soft_cap, layer_pool, next_run, F32_CODE, False,
                                keys_t,
                            )  # fmt: skip
                        else:
                            _attend_tiles(
                                q_rows, stored_keys, stored_values, lo, hi,
                                first_pos - base, rows, group, causal, window,
                                sinks - base, tile_scores, scores, row_max,
                                row_sum, acc, soft_cap, layer_pool, next_run,
                                kind_code, kind_code == F32_CODE, keys_t,
                            )  # fmt: skip
                        continue
                    keys = block_as_f32(stored_keys, key_scratch, kind_code, lo, hi)
                    values = block_as_f32(
                        stored_values, value_scratch, kind_code, lo, hi
                    )
                    # Quantized blocks outside the tiles' shapes are decoded
                    # once, then attended row by row as float32.
                    decode_codes(
                        stored_keys, lo, hi, meta, keys, values, kind_code, quant[0]
                    )
                    _attend_rows(
                        q_rows, keys, values, lo, hi, first_pos - base, 0, rows,
                        group, causal, window, sinks - base, scores, row_max,
                        row_sum, acc, soft_cap, kind_code == F32_CODE,
                    )  # fmt: skip

            if amx_item:
                amx.release()  # pyright: ignore[reportCallIssue]
            if with_mass:
                if previous >= 0:
                    _record_block_mass(
                        rows, row_max, row_sum, max_before, sum_before,
                        contrib, contrib_max, previous,
                    )  # fmt: skip
                for j in range(width):
                    total = np.float32(0.0)
                    for r in range(rows):
                        if contrib_max[r, j] > -np.inf and row_sum[r] > 0:
                            total += (
                                contrib[r, j]
                                * np.float32(math.exp(contrib_max[r, j] - row_max[r]))
                                / row_sum[r]
                            )
                    block_mass[b, h, j] = total
            if num_partitions == 1:
                for r in range(rows):
                    hq_index = h * group + r % group
                    inv = (
                        np.float32(1.0) / row_sum[r]
                        if row_sum[r] > 0
                        else np.float32(0.0)
                    )
                    for d in range(head_dim):
                        out[b, q0 + r // group, hq_index, d] = acc[r, d] * inv
            else:
                for r in range(rows):
                    part_max[b, h, tile, part, r] = row_max[r]
                    part_sum[b, h, tile, part, r] = row_sum[r]
                    for d in range(head_dim):
                        part_acc[b, h, tile, part, r, d] = acc[r, d]

        if num_partitions > 1:
            merges = batch * num_heads * q_tiles
            for item in prange(merges):
                tile = item % q_tiles
                h = (item // q_tiles) % num_heads
                b = item // (q_tiles * num_heads)
                q0 = tile * q_tile
                rows = min(q_tile, tq - q0) * group
                merged = np.empty(head_dim, dtype=np.float32)
                for r in range(rows):
                    overall = -np.inf
                    for part in range(num_partitions):
                        overall = max(overall, part_max[b, h, tile, part, r])
                    total = np.float32(0.0)
                    merged[:] = 0.0
                    # A partition that saw no key has sum 0 and max -inf; skip it
                    # rather than compute exp(-inf - -inf).
                    for part in range(num_partitions):
                        if part_sum[b, h, tile, part, r] > 0:
                            w = np.float32(
                                math.exp(part_max[b, h, tile, part, r] - overall)
                            )
                            total += w * part_sum[b, h, tile, part, r]
                            for d in range(head_dim):
                                merged[d] += w * part_acc[b, h, tile, part, r, d]
                    inv = np.float32(1.0) / total if total > 0 else np.float32(0.0)
                    hq_index = h * group + r % group
                    for d in range(head_dim):
                        out[b, q0 + r // group, hq_index, d] = merged[d] * inv

    return kernel


# ---------------------------------------------------------------------------
# Planning and launch


def plan_partition_size(
    batch: int,
    num_heads: int,
    q_tiles: int,
    max_seq_len_in_batch: int,
    block_size: int,
    threads: int | None = None,
) -> int | None:
    """Tokens per context partition, or None to keep contexts whole.

    Splitting pays only when the contexts are long enough that a
    partition's work dwarfs the merge and the (sequence, kv head, tile)
    items are too few to balance over the `threads` (default: Numba's
    count, asked only when the contexts are long: a call into Numba's
    runtime that most decode steps need not make).
    """
    size = max(block_size, DEFAULT_PARTITION_SIZE // block_size * block_size)
    if max_seq_len_in_batch <= size:
        return None
    if threads is None:
        threads = numba.get_num_threads()
    if batch * num_heads * q_tiles >= 8 * threads:
        return None
    return size


def run_paged_attention(
    query: npt.NDArray[np.float32],
    layer_pool: npt.NDArray[Any],
    kind_code: int,
    block_table: npt.NDArray[np.int32],
    seq_lens: npt.NDArray[np.int32],
    out: npt.NDArray[np.float32],
    *,
    scale: float,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    sink_tokens: int = 0,
    partition_size: int | None = None,
    q_tile: int | None = None,
    auto_partition: bool = True,
    block_mass: npt.NDArray[np.float32] | None = None,
    max_len: int | None = None,
    quant: npt.NDArray[np.int64] | None = None,
    use_amx: bool | None = None,
    use_vnni: bool | None = None,
) -> None:
    """Write attention of `query` over `layer_pool` into `out` (both float32
    ``[batch, Tq, Hq, D]``, C-contiguous).  Arguments must be valid (see
    `llmir.runtime.validation`).

    `partition_size` (a multiple of the block size) forces a context split;
    without it the split is planned by `plan_partition_size` unless
    `auto_partition` is False.  `q_tile` (queries per work item) overrides
    the default: `TILE_ROWS` rows, at least `DEFAULT_Q_TILE` queries.

    `block_mass` (float32 ``[batch, H, width]``, C-contiguous), if given,
    receives per sequence, kv head and logical block the attention mass the
    block got: its softmax weights summed over the group's query heads and
    the queries (so a row of it sums to Tq * Hq / H where keys were seen).
    It needs every context whole: the split and the query tiles are off.

    `max_len` is ``max(seq_lens)`` when the caller knows it (a checked
    `BlockTable` does).  `quant` (quantized pools): int64 ``[K metadata bytes per
    row]`` of the pool's layout.  `use_amx` (default `amx.enabled()`) lets a
    bf16 pool take the AMX tiles where the CPU has them; False forces the
    AVX-512 path.  `use_vnni` (default `vnni.enabled()`) lets an i8 pool's
    fours of rows take the integer tiles where the CPU has them; False
    forces the float32 tiles.
    """
    if query.size == 0:
        return
    batch, tq, hq, head_dim = query.shape
    num_heads = layer_pool.shape[1]
    block_size = layer_pool.shape[2 if layer_pool.ndim == 4 else 3]
    group = hq // num_heads
    tile = min(tq, q_tile or max(DEFAULT_Q_TILE, TILE_ROWS // group))
    if block_mass is not None:
        tile, partition_size, auto_partition = tq, None, False
    q_tiles = -(-tq // tile)
    if max_len is None:
        max_len = int(seq_lens.max())
    if partition_size is None and auto_partition:
        partition_size = plan_partition_size(
            batch, num_heads, q_tiles, max_len, block_size
        )
    # Without a split: one partition covering every context.
    size = partition_size or max(block_size, -(-max_len // block_size) * block_size)
    num_partitions = max(1, -(-max_len // size))
    if num_partitions > 1:
        state_shape = (batch, num_heads, q_tiles, num_partitions, tile * group)
        part_max = np.empty(state_shape, dtype=np.float32)
        part_sum = np.empty(state_shape, dtype=np.float32)
        part_acc = np.empty((*state_shape, head_dim), dtype=np.float32)
    else:  # unused by the kernel; only the ranks must match
        part_max = part_sum = _NO_PARTITION_STATE
        part_acc = _NO_PARTITION_ACC
    if use_amx is None:
        use_amx = amx.enabled()
    if use_vnni is None:
        use_vnni = vnni.enabled()
    attention_kernel(
        kind_code,
        block_mass is not None,
        use_amx and amx.available(),
        use_vnni and vnni.available() and kind_code == I8_CODE,
    )(
        query,
        layer_pool,
        block_table,
        seq_lens,
        np.float32(scale),
        causal,
        sliding_window or 0,
        sink_tokens,
        np.float32(logits_soft_cap or 0.0),
        tile,
        size,
        num_partitions,
        out,
        part_max,
        part_sum,
        part_acc,
        _NO_BLOCK_MASS if block_mass is None else block_mass,
        _NO_QUANT if quant is None else quant,
    )


# Empty stand-ins for the kernel's optional arrays (never written).
_NO_PARTITION_STATE = np.empty((0, 0, 0, 0, 0), np.float32)
_NO_PARTITION_ACC = np.empty((0, 0, 0, 0, 0, 0), np.float32)
_NO_BLOCK_MASS = np.empty((0, 0, 0), np.float32)
_NO_QUANT = np.zeros(1, np.int64)
