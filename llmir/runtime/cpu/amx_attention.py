"""The two matrix products of a half-precision block, ``S = Q K^T`` and
``acc += P V``, on AMX tiles (`llmir.runtime.cpu.amx`), for sixteen query
rows at a time; the softmax between them is the kernel's
(`attention_kernels`).

Operands.  ``tdpbf16ps`` multiplies an A tile of M rows by 2K bfloat16 by
a B tile of K rows of N bf16 *pairs*: ``c[m, n] += a[m, 2k] b[k, n, 0] +
a[m, 2k + 1] b[k, n, 1]``.  So:

* ``S = Q K^T``: A is the query rows (16 by 32 channels), B the block's
  keys with channel pairs down and tokens across: ``key_pairs[k, t]`` is
  the 32-bit word ``(K[t, 2k], K[t, 2k + 1])``, the stored block
  transposed as 32-bit words, once per block for all the rows of an item;
* ``acc += P V``: A is the weights (16 rows by 32 tokens; a block of 16
  pads them with zeros), B the values with token pairs down and channels
  across: ``value_pairs[j, d]`` is ``(V[2j, d], V[2j + 1, d])``, once per
  block.

Each accumulates into four tiles at a time (four groups of 16 tokens, or
of 16 channels), so consecutive products do not wait on each other's
results.

Precision.  bf16 keys and values are the tiles' format.  An f16 element
(11 significant bits) is exactly the sum of two bf16, its rounding and
the rest, so an f16 block goes in as two planes of pairs.  The query rows
and the weights are float32, and each goes in as two bf16 parts the same
way: ``hi + lo`` is within 2^-17 of x, relative (bf16 alone: 2^-9).  The
products of two low parts (below 2^-17) are left out; the tiles
accumulate in float32.  So the result is within a few 1e-6 of float32
arithmetic on the stored values, far inside the 1e-3 a half-precision
cache is held to.  A query that is bf16 already, as in a bf16 model, has
no low part and skips its products.

Tile registers: 0-3 accumulate (scores, then the output's channels), 4-5
hold the query's or the weights' two parts, 6-7 key or value pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types  # pyright: ignore[reportUnknownVariableType]
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from llmir.runtime.cpu import amx
from llmir.runtime.cpu.simd import transpose_block

ROWS = amx.TILE_ROWS
"""Query rows of one tile: a work item's rows go sixteen at a time (the
last sixteen padded with zero queries)."""

KEYS = 16
"""Tokens of one score tile."""

CHANNELS = 32
"""Channels of one query tile: the head dimension must be a multiple."""

SPAN_TOKENS = 4 * KEYS
"""Tokens an item takes through the tiles at once: blocks smaller than
this go several at a time, so the scores fill four tiles.  (Blocks of 16,
MHA f16 prefill: alone, 148 ms against 110 ms without the tiles.)"""

PAIR_TOKENS = 2 * KEYS
"""Tokens of one ``P V`` product: 16 pairs.  A block of 16 pads its
weights and value pairs to 32 with zeros."""

_HIGH, _LOW, _PAIRS, _PAIRS_2 = 4, 5, 6, 7


@njit(inline="always", cache=True)
def supports(head_dim: Any, block_size: Any) -> Any:
    """Whether blocks of this shape go through the tiles."""
    return head_dim % CHANNELS == 0 and block_size % KEYS == 0


@njit(cache=True)
def configure() -> None:
    """Load this thread's tile configuration: eight full tiles."""
    config = np.zeros(64, np.uint8)
    config[0] = 1  # palette 1
    for tile in range(8):
        config[16 + 2 * tile] = amx.TILE_BYTES
        config[48 + tile] = ROWS
    amx.load_config(config)  # pyright: ignore[reportCallIssue]


_SPLIT_LANES = 16
_F32X16 = ir.VectorType(ir.FloatType(), _SPLIT_LANES)
_I32X16 = ir.VectorType(ir.IntType(32), _SPLIT_LANES)
_I16X16 = ir.VectorType(ir.IntType(16), _SPLIT_LANES)


def _bf16_round(builder: Any, bits: Any) -> Any:
    """float32 bits -> those of the nearest bfloat16 (ties to even), still
    in the upper half of each 32-bit lane (the lower half zero)."""

    def splat(value: int) -> Any:
        return ir.Constant(_I32X16, [value] * _SPLIT_LANES)

    odd = builder.and_(builder.lshr(bits, splat(16)), splat(1))
    rounded = builder.add(builder.add(bits, splat(0x7FFF)), odd)
    return builder.and_(rounded, splat(-65536))


@intrinsic
def split_bf16(
    typingctx: Any, x: Any, rows: Any, lo: Any, hi: Any, high: Any, low: Any
) -> Any:
    """``x[i, lo:hi] = high + low`` as two bf16 matrices (uint16 bits), for
    i < `rows` (float32 `x`, finite; ``hi - lo`` a multiple of 16), 16
    lanes at a time; returns whether any `low` is nonzero.  (A Numba loop
    of the same stayed scalar: 1.7 cycles per element.)"""
    for name, array, dtype in (("x", x, types.float32), ("high", high, types.uint16),
                               ("low", low, types.uint16)):  # fmt: skip
        if not (isinstance(array, types.Array) and array.ndim == 2
                and array.dtype == dtype):  # fmt: skip
            raise TypingError(f"{name} must be a 2-D {dtype} array, got {array}")
    sig = types.boolean(x, rows, lo, hi, high, low)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arrays = [
            (context.make_array(signature.args[k])(context, builder, args[k]),
             signature.args[k])
            for k in (0, 4, 5)
        ]  # fmt: skip
        count, first, last = (
            context.cast(builder, args[k], signature.args[k], types.intp)
            for k in (1, 2, 3)
        )
        intp = context.get_value_type(types.intp)
        any_low = cgutils.alloca_once_value(builder, ir.Constant(_I32X16, None))
        builder.store(ir.Constant(_I32X16, [0] * _SPLIT_LANES), any_low)

        def address(which: int, i: Any, t: Any, vector: Any) -> Any:
            array, array_type = arrays[which]
            pointer = cgutils.get_item_pointer(
                context, builder, array_type, array, [i, t]
            )
            return builder.bitcast(pointer, vector.as_pointer())

        with (
            cgutils.for_range(builder, count) as row,
            cgutils.for_range_slice(
                builder, first, last, ir.Constant(intp, _SPLIT_LANES)
            ) as (t, _),
        ):
            i = row.index
            value = builder.load(address(0, i, t, _F32X16), align=4)
            bits = builder.bitcast(value, _I32X16)
            top = _bf16_round(builder, bits)
            rest = builder.fsub(value, builder.bitcast(top, _F32X16))
            bottom = _bf16_round(builder, builder.bitcast(rest, _I32X16))
            sixteen = ir.Constant(_I32X16, [16] * _SPLIT_LANES)
            for which, part in ((1, top), (2, bottom)):
                halves = builder.trunc(builder.lshr(part, sixteen), _I16X16)
                builder.store(halves, address(which, i, t, _I16X16), align=2)
            builder.store(builder.or_(builder.load(any_low), bottom), any_low)
        lanes = builder.load(any_low)
        folded = ir.Constant(ir.IntType(32), 0)
        for lane in range(_SPLIT_LANES):
            index = ir.Constant(ir.IntType(32), lane)
            folded = builder.or_(folded, builder.extract_element(lanes, index))
        return builder.icmp_unsigned("!=", folded, ir.Constant(ir.IntType(32), 0))

    return sig, codegen


@njit(inline="always", cache=True)
def key_pairs(keys: Any, start: Any, stop: Any, pairs: Any) -> None:
    """``pairs[k, t]`` = the 32-bit word of channels ``2k, 2k + 1`` of
    token t, for t in ``start:stop`` (multiples of 16): the stored bf16
    block ``[block_size, D]`` transposed as words, 8 x 8 at a time (the
    float32 transpose moves bits unchanged)."""
    transpose_block(keys.view(np.float32), start, stop, pairs.view(np.float32))  # pyright: ignore[reportCallIssue]


@njit(inline="always", cache=True)
def value_pairs(
    values: Any, start: Any, stop: Any, lo: Any, hi: Any, pairs: Any
) -> None:
    """``pairs[j, d]`` = the word ``(V[2j, d], V[2j + 1, d])`` for tokens
    ``start:stop``, zero for tokens outside ``lo:hi`` (their weight is 0,
    and 0 times whatever an unwritten slot holds must stay 0)."""
    head_dim = values.shape[1]
    for j in range(start // 2, stop // 2):
        t = 2 * j
        if t >= lo and t + 1 < hi:
            for d in range(head_dim):
                pairs[j, d] = np.uint32(values[t, d]) | (
                    np.uint32(values[t + 1, d]) << np.uint32(16)
                )
        else:
            first = np.uint32(1) if lo <= t < hi else np.uint32(0)
            second = np.uint32(1) if lo <= t + 1 < hi else np.uint32(0)
            for d in range(head_dim):
                pairs[j, d] = (np.uint32(values[t, d]) * first) | (
                    (np.uint32(values[t + 1, d]) * second) << np.uint32(16)
                )


@njit(inline="always", cache=True)
def _score_chunk(
    q_high: Any, q_low: Any, with_low: Any, r: Any, pairs: Any, pairs_low: Any,
    low_keys: Any, t: Any, groups: Any, out: Any,
) -> None:  # fmt: skip
    """`scores` of `groups` (1-4) groups of 16 tokens from `t` on, one
    accumulator tile each, so their products do not wait on each other;
    the key tiles alternate between two registers for the same reason."""
    head_dim = q_high.shape[1]
    amx.zero(0)  # pyright: ignore[reportCallIssue]
    if groups > 1:
        amx.zero(1)  # pyright: ignore[reportCallIssue]
    if groups > 2:
        amx.zero(2)  # pyright: ignore[reportCallIssue]
    if groups > 3:
        amx.zero(3)  # pyright: ignore[reportCallIssue]
    for c in range(0, head_dim, CHANNELS):
        k = c // 2
        amx.load(_HIGH, q_high, r, c)  # pyright: ignore[reportCallIssue]
        if with_low:
            amx.load(_LOW, q_low, r, c)  # pyright: ignore[reportCallIssue]
        # Group 0 in register _PAIRS (its keys' low plane in _PAIRS_2),
        # group 1 the other way round, and so on.
        amx.load(_PAIRS, pairs, k, t)  # pyright: ignore[reportCallIssue]
        amx.dot_bf16(0, _HIGH, _PAIRS)  # pyright: ignore[reportCallIssue]
        if with_low:
            amx.dot_bf16(0, _LOW, _PAIRS)  # pyright: ignore[reportCallIssue]
        if low_keys:
            amx.load(_PAIRS_2, pairs_low, k, t)  # pyright: ignore[reportCallIssue]
            amx.dot_bf16(0, _HIGH, _PAIRS_2)  # pyright: ignore[reportCallIssue]
        if groups > 1:
            amx.load(_PAIRS_2, pairs, k, t + KEYS)  # pyright: ignore[reportCallIssue]
            amx.dot_bf16(1, _HIGH, _PAIRS_2)  # pyright: ignore[reportCallIssue]
            if with_low:
                amx.dot_bf16(1, _LOW, _PAIRS_2)  # pyright: ignore[reportCallIssue]
            if low_keys:
                amx.load(_PAIRS, pairs_low, k, t + KEYS)  # pyright: ignore[reportCallIssue]
                amx.dot_bf16(1, _HIGH, _PAIRS)  # pyright: ignore[reportCallIssue]
        if groups > 2:
            amx.load(_PAIRS, pairs, k, t + 2 * KEYS)  # pyright: ignore[reportCallIssue]
            amx.dot_bf16(2, _HIGH, _PAIRS)  # pyright: ignore[reportCallIssue]
            if with_low:
                amx.dot_bf16(2, _LOW, _PAIRS)  # pyright: ignore[reportCallIssue]
            if low_keys:
                amx.load(_PAIRS_2, pairs_low, k, t + 2 * KEYS)  # pyright: ignore[reportCallIssue]
                amx.dot_bf16(2, _HIGH, _PAIRS_2)  # pyright: ignore[reportCallIssue]
        if groups > 3:
            amx.load(_PAIRS_2, pairs, k, t + 3 * KEYS)  # pyright: ignore[reportCallIssue]
            amx.dot_bf16(3, _HIGH, _PAIRS_2)  # pyright: ignore[reportCallIssue]
            if with_low:
                amx.dot_bf16(3, _LOW, _PAIRS_2)  # pyright: ignore[reportCallIssue]
            if low_keys:
                amx.load(_PAIRS, pairs_low, k, t + 3 * KEYS)  # pyright: ignore[reportCallIssue]
                amx.dot_bf16(3, _HIGH, _PAIRS)  # pyright: ignore[reportCallIssue]
    amx.store(0, out, 0, t)  # pyright: ignore[reportCallIssue]
    if groups > 1:
        amx.store(1, out, 0, t + KEYS)  # pyright: ignore[reportCallIssue]
    if groups > 2:
        amx.store(2, out, 0, t + 2 * KEYS)  # pyright: ignore[reportCallIssue]
    if groups > 3:
        amx.store(3, out, 0, t + 3 * KEYS)  # pyright: ignore[reportCallIssue]


@njit(inline="always", cache=True)
def scores(
    q_high: Any, q_low: Any, with_low: Any, r: Any, pairs: Any, pairs_low: Any,
    low_keys: Any, start: Any, stop: Any, out: Any,
) -> None:  # fmt: skip
    """``out[i, t] = q[r + i] . K[t]`` for i < 16 and t in ``start:stop``
    (multiples of 16), from the query rows' bf16 parts and `key_pairs` of
    the keys (and of their low plane, `low_keys`: ``q_high`` times it, the
    query's low part times it being below 2^-17)."""
    for t in range(start, stop, 4 * KEYS):
        groups = min(4, (stop - t) // KEYS)
        _score_chunk(
            q_high, q_low, with_low, r, pairs, pairs_low, low_keys, t, groups, out
        )


@njit(inline="always", cache=True)
def _accumulate_chunk(
    p_high: Any, p_low: Any, pairs: Any, pairs_low: Any, low_values: Any,
    start: Any, stop: Any, acc: Any, r: Any, c: Any, chunks: Any,
) -> None:  # fmt: skip
    """`accumulate` into `chunks` (1-4) tiles of 16 channels from `c` on,
    each its own chain of products."""
    amx.load(0, acc, r, c)  # pyright: ignore[reportCallIssue]
    if chunks > 1:
        amx.load(1, acc, r, c + KEYS)  # pyright: ignore[reportCallIssue]
    if chunks > 2:
        amx.load(2, acc, r, c + 2 * KEYS)  # pyright: ignore[reportCallIssue]
    if chunks > 3:
        amx.load(3, acc, r, c + 3 * KEYS)  # pyright: ignore[reportCallIssue]
    for t in range(start, stop, PAIR_TOKENS):
        j = t // 2
        amx.load(_HIGH, p_high, 0, t)  # pyright: ignore[reportCallIssue]
        amx.load(_LOW, p_low, 0, t)  # pyright: ignore[reportCallIssue]
        amx.load(_PAIRS, pairs, j, c)  # pyright: ignore[reportCallIssue]
        amx.dot_bf16(0, _HIGH, _PAIRS)  # pyright: ignore[reportCallIssue]
        amx.dot_bf16(0, _LOW, _PAIRS)  # pyright: ignore[reportCallIssue]
        if low_values:
            amx.load(_PAIRS_2, pairs_low, j, c)  # pyright: ignore[reportCallIssue]
            amx.dot_bf16(0, _HIGH, _PAIRS_2)  # pyright: ignore[reportCallIssue]
        if chunks > 1:
            amx.load(_PAIRS_2, pairs, j, c + KEYS)  # pyright: ignore[reportCallIssue]
            amx.dot_bf16(1, _HIGH, _PAIRS_2)  # pyright: ignore[reportCallIssue]
            amx.dot_bf16(1, _LOW, _PAIRS_2)  # pyright: ignore[reportCallIssue]
            if low_values:
                amx.load(_PAIRS, pairs_low, j, c + KEYS)  # pyright: ignore[reportCallIssue]
                amx.dot_bf16(1, _HIGH, _PAIRS)  # pyright: ignore[reportCallIssue]
        if chunks > 2:
            amx.load(_PAIRS, pairs, j, c + 2 * KEYS)  # pyright: ignore[reportCallIssue]
            amx.dot_bf16(2, _HIGH, _PAIRS)  # pyright: ignore[reportCallIssue]
            amx.dot_bf16(2, _LOW, _PAIRS)  # pyright: ignore[reportCallIssue]
            if low_values:
                amx.load(_PAIRS_2, pairs_low, j, c + 2 * KEYS)  # pyright: ignore[reportCallIssue]
                amx.dot_bf16(2, _HIGH, _PAIRS_2)  # pyright: ignore[reportCallIssue]
        if chunks > 3:
            amx.load(_PAIRS_2, pairs, j, c + 3 * KEYS)  # pyright: ignore[reportCallIssue]
            amx.dot_bf16(3, _HIGH, _PAIRS_2)  # pyright: ignore[reportCallIssue]
            amx.dot_bf16(3, _LOW, _PAIRS_2)  # pyright: ignore[reportCallIssue]
            if low_values:
                amx.load(_PAIRS, pairs_low, j, c + 3 * KEYS)  # pyright: ignore[reportCallIssue]
                amx.dot_bf16(3, _HIGH, _PAIRS)  # pyright: ignore[reportCallIssue]
    amx.store(0, acc, r, c)  # pyright: ignore[reportCallIssue]
    if chunks > 1:
        amx.store(1, acc, r, c + KEYS)  # pyright: ignore[reportCallIssue]
    if chunks > 2:
        amx.store(2, acc, r, c + 2 * KEYS)  # pyright: ignore[reportCallIssue]
    if chunks > 3:
        amx.store(3, acc, r, c + 3 * KEYS)  # pyright: ignore[reportCallIssue]


@njit(inline="always", cache=True)
def accumulate(
    p_high: Any, p_low: Any, pairs: Any, pairs_low: Any, low_values: Any,
    start: Any, stop: Any, acc: Any, r: Any,
) -> None:  # fmt: skip
    """``acc[r + i] += P[i, start:stop] V[start:stop]`` for i < 16, from the
    weights' bf16 parts and `value_pairs` of the values (and of their low
    plane, `low_values`), `start` and `stop` multiples of `PAIR_TOKENS`."""
    head_dim = acc.shape[1]
    for c in range(0, head_dim, 4 * KEYS):
        chunks = min(4, (head_dim - c) // KEYS)
        _accumulate_chunk(
            p_high, p_low, pairs, pairs_low, low_values, start, stop, acc, r, c,
            chunks,
        )  # fmt: skip
