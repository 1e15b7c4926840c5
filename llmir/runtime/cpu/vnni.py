"""Both products of an i8 block, ``S = Q K^T`` and ``acc += P V``, for four
query rows or one on the CPU's integer dot-product instruction (AVX-512
VNNI), and whether this process may use it.

A GQA group's four query rows share every block they read, and decode
with them is bound by arithmetic, not by bytes: in float32 every code is
converted and scaled, then multiplied into four rows, one multiply-add of
eight lanes per row, eight channels and token.  ``vpdpwssd`` multiplies
sixteen pairs of 16-bit integers and adds each pair's two products into
one 32-bit lane, so the same work takes half the instructions, and the
codes need no conversion to float.  Hot (one thread, GQA 32/8, D = 128,
ns per token and kv head, this path against the float32 one in the same
process): block 16 44.1 -> 35.8, block 64 49.5 -> 31.8.  A single row
(MHA decode) gains too, where the codes' conversions made it bound by
arithmetic (`SINGLE_ROW_BLOCKS`).

So the float operands become integers, each within half a step:

* keys: the query rows, scaled by the block's key scales (``q' = q *
  scale[c]``, as the float path folds them), become ``x = rint(q' /
  step)`` with ``step = max_c |q'| / 32767`` per row and block
  (`quantize_query_rows`).  A logit is ``sum_c q'_c (code_c - 128)``
  (i8 is symmetric), computed as ``step * (sum_c x_c code_c - 128 sum_c
  x_c)`` in exact integers (`qk_codes`), so it is within ``step / 2 *
  sum_c |code_c - 128|`` of the float one.
* values: token t decodes as ``scale[t] * (code - 128)``, so a row's
  ``P V`` is ``sum_t w_t (code_t - 128)`` with ``w_t = p_t * scale[t] >=
  0``, the weights ``y_t = rint(w_t / step)`` with ``step = max_t w_t /
  32767`` per row and span of tokens (`pv_codes`): within ``step / 2 *
  sum_t |code_t - 128|`` per channel.  Two tokens' codes of a channel
  share a lane (``vpunpcklwd``), and the integers join the float32
  accumulator once per span.

Both bounds are a few parts per million of the terms summed; the tests
hold each product to its bound and the kernel's outputs to 1e-3 of the
float64 reference over the stored values (the halves' tolerance).  The
integers must not overflow: a logit's ``sum x code`` stays under ``32767 *
255 * 256 < 2^31`` (`MAX_HEAD_DIM`), a span's ``sum y code`` under
``32767 * 255 * (128 + 14)`` (`SPAN_TOKENS` tokens, padded to whole eights).

`enabled()` says whether the CPU has the instruction (``avx512vnni`` and
``avx512vl``, LLVM's host features, the ones Numba compiles for), unless
``LLMIR_CPU_VNNI=0`` turns it off (the kernels then take the float32
tiles; the tests check both).  Where it is off, the intrinsics that use it
compile to nothing: a CPU without it cannot select the instruction, and
the kernels reach them only behind a compile-time flag that is then false.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from llvmlite import ir
from numba import njit, types  # pyright: ignore[reportUnknownVariableType]
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

# The IR helpers of the float tiles, shared rather than repeated.
from llmir.runtime.cpu.host import host_has
from llmir.runtime.cpu.quant_simd import _c_array  # pyright: ignore[reportPrivateUsage]
from llmir.runtime.cpu.simd import (
    _combine,  # pyright: ignore[reportPrivateUsage]
    _fold_eight,  # pyright: ignore[reportPrivateUsage]
    _Rows,  # pyright: ignore[reportPrivateUsage]
)

ROWS = 4
"""Query rows of one tile: a GQA group of four, or four of a larger one."""

CHANNELS = 32
"""Channels per pass over a span's tokens: 16 accumulators of 8 lanes (four
rows by four vectors) in registers; the head dimension must be a multiple
of it."""

KEYS = 4
"""Keys of one `qk_codes` tile: its callers start tiles at multiples of it
and read whole tiles (the block size is a multiple of 8)."""

MAX_HEAD_DIM = 256
"""The largest head dimension of the integer logits: a sum of ``x * code``
over the channels stays under ``32767 * 255 * 256 < 2^31``."""

SINGLE_ROW_BLOCKS = 64
"""Blocks from this size on keep a single query row (MHA decode) on the
float tiles.  Batch 8, 8192 tokens, MHA 16/16 (two runs): at block 16 the
integer tiles took 11.48-11.52 ms against 13.36-13.51, at block 64
13.98-14.20 against 13.33-13.55, although hot (one thread, pool in
cache) they were faster there too (13.2-13.4 ns a token against
17.7-17.8); block 32 was not measured."""

QUERY_WORDS = 32
"""Columns of the `words` scratch past the head dimension that
`quantize_query_rows` fills for `qk_codes`."""

SPAN_TOKENS = 128
"""Tokens summed in 32-bit integers before they join the float32
accumulator (see the module doc)."""

WEIGHT_LEVELS = 32767
"""The largest integer weight: 15 bits, as ``vpdpwssd``'s signed words
hold them."""

_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_F32 = ir.FloatType()
_LANES = 8
_DWORDS = ir.VectorType(_I32, _LANES)
_FLOATS = ir.VectorType(_F32, _LANES)
_HALF_BYTES = ir.VectorType(_I8, 16)
_WORDS = ir.VectorType(_I16, 16)


@cache
def available() -> bool:
    """Whether this CPU has 256-bit ``vpdpwssd`` (AVX-512 VNNI and VL)."""
    return host_has("avx512vnni", "avx512vl")


def enabled() -> bool:
    """`available`, unless the environment sets ``LLMIR_CPU_VNNI=0``."""
    return os.environ.get("LLMIR_CPU_VNNI", "1") != "0" and available()


def _splat(builder: Any, scalar: Any, vector_type: Any) -> Any:
    undefined = ir.Constant(vector_type, None)
    one = builder.insert_element(undefined, scalar, ir.Constant(_I32, 0))
    lanes = ir.Constant(ir.VectorType(_I32, vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(one, undefined, lanes)


def _shuffle(builder: Any, a: Any, b: Any, indices: list[int]) -> Any:
    mask = ir.Constant(ir.VectorType(_I32, len(indices)), indices)
    return builder.shuffle_vector(a, b, mask)


# Two tokens' 16 words interleaved within each 128-bit half (``vpunpcklwd``,
# ``vpunpckhwd``): the low unpack holds channels 0-3 and 8-11 of the 16, the
# high one 4-7 and 12-15, each lane a (token t, token t + 1) pair.
_UNPACK_LOW = [0, 16, 1, 17, 2, 18, 3, 19, 8, 24, 9, 25, 10, 26, 11, 27]
_UNPACK_HIGH = [4, 20, 5, 21, 6, 22, 7, 23, 12, 28, 13, 29, 14, 30, 15, 31]
# Two such dword vectors back in channel order: channels 0-7, then 8-15.
_CHANNELS_LOW = [0, 1, 2, 3, 8, 9, 10, 11]
_CHANNELS_HIGH = [4, 5, 6, 7, 12, 13, 14, 15]


def _require(ndim: int, dtype: Any, **arrays: Any) -> None:
    """Refuse, at typing, any of `arrays` that is not C-contiguous with
    `ndim` dimensions of `dtype`."""
    for name, array in arrays.items():
        if not _c_array(array, ndim, dtype):
            raise TypingError(
                f"{name} must be a C-contiguous {ndim}D {dtype} array, got {array}"
            )


def _call(builder: Any, name: str, result: Any, *operands: Any) -> Any:
    signature = ir.FunctionType(result, [operand.type for operand in operands])
    function = cgutils.get_or_insert_function(builder.module, signature, name)
    return builder.call(function, list(operands))


def _across_rows(builder: Any, vectors: list[Any], kind: str) -> list[Any]:
    """Up to four vectors of eight lanes, each folded over its lanes by
    `kind` (`simd._combine`'s "max" or "add"): `simd._fold_eight`'s
    transposing tree, given the four twice (LLVM merges the repeated folds,
    so the tree is two levels of shuffles and one more combine), where four
    separate reductions would be four serial chains."""
    padded = [vectors[i % len(vectors)] for i in range(ROWS)] * 2
    folded = _fold_eight(builder, padded, kind)
    return [
        builder.extract_element(folded, ir.Constant(_I32, i))
        for i in range(len(vectors))
    ]


def _integer_steps(builder: Any, tops: list[Any]) -> tuple[list[Any], list[Any]]:
    """Per row, from the largest magnitude: the multiplier to 15-bit
    integers (0 for an all-zero row) and the step back, as splats."""
    levels = ir.Constant(_F32, float(WEIGHT_LEVELS))
    zero = ir.Constant(_F32, 0.0)
    inverses, steps = [], []
    for top in tops:
        positive = builder.fcmp_ordered(">", top, zero)
        inverse = builder.select(positive, builder.fdiv(levels, top), zero)
        inverses.append(_splat(builder, inverse, _FLOATS))
        steps.append(builder.fdiv(top, levels))
    return inverses, steps


def _to_integers(builder: Any, scaled: Any) -> Any:
    """``rint`` of a float vector as int32, within +-32767 (rounding can
    carry a value a hair past the largest level, never a whole one)."""
    x = builder.fptosi(_call(builder, "llvm.rint.v8f32", _FLOATS, scaled), _DWORDS)
    cap = ir.Constant(_DWORDS, [WEIGHT_LEVELS] * _LANES)
    floor = ir.Constant(_DWORDS, [-WEIGHT_LEVELS] * _LANES)
    x = builder.select(builder.icmp_signed("<", x, cap), x, cap)
    return builder.select(builder.icmp_signed(">", x, floor), x, floor)


_NARROW = ir.VectorType(_I16, _LANES)


def _quantize_intrinsic(rows: int) -> Any:
    """`quantize_query_rows` for `rows` rows (4 or 1)."""

    @intrinsic
    def quantize(typingctx: Any, q_rows: Any, r: Any, scales: Any, words: Any) -> Any:
        return _quantize_typed(rows, q_rows, r, scales, words)

    return quantize


def _quantize_typed(rows: int, q_rows: Any, r: Any, scales: Any, words: Any) -> Any:
    """For i < `rows`: ``q = q_rows[r + i] * scales`` (float32, the scaled query
    of `simd.scale_query_rows`) as 15-bit integers ``x = rint(q / step)``,
    ``step = max |q| / 32767``, into ``words[i, :D]`` (int16), with ``sum
    x`` and `step` as `qk_codes` reads them after the codes of row 0 (``D +
    32`` columns in all).  The head dimension is a multiple of 8.  The four
    rows go side by side: one at a time, each row's maximum and sum were
    serial chains, and this took 110 ns a block, where the scaling alone
    takes 19."""
    _require(2, types.float32, q_rows=q_rows)
    _require(1, types.float32, scales=scales)
    _require(2, types.int16, words=words)
    sig = types.void(q_rows, r, scales, words)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arg_types = signature.args
        q = _Rows(context, builder, arg_types[0], args[0])
        y = _Rows(context, builder, arg_types[3], args[3])
        scale_array = context.make_array(arg_types[2])(context, builder, args[2])
        scale_data = builder.bitcast(scale_array.data, _F32.as_pointer())
        row = context.cast(builder, args[1], arg_types[1], types.intp)
        intp_type = row.type

        def const(value: int) -> Any:
            return ir.Constant(intp_type, value)

        head_dim = q.columns
        rows_at = [builder.add(row, const(i)) for i in range(rows)]

        def scaled_rows(c: Any) -> list[Any]:
            pointer = builder.bitcast(
                builder.gep(scale_data, [c]), _FLOATS.as_pointer()
            )
            factor = builder.load(pointer, align=4)
            return [
                builder.fmul(builder.load(q.address(at, c, _FLOATS), align=4), factor)
                for at in rows_at
            ]

        zeros = ir.Constant(_FLOATS, [0.0] * _LANES)
        tops = [cgutils.alloca_once_value(builder, zeros) for _ in range(rows)]
        with cgutils.for_range_slice(builder, const(0), head_dim, const(_LANES)) as (
            c,
            _,
        ):
            for top, value in zip(tops, scaled_rows(c), strict=True):
                magnitude = _call(builder, "llvm.fabs.v8f32", _FLOATS, value)
                larger = _combine(builder, "max", magnitude, builder.load(top))
                builder.store(larger, top)
        largest = _across_rows(builder, [builder.load(top) for top in tops], "max")
        inverses, steps = _integer_steps(builder, largest)
        no_sum = ir.Constant(_DWORDS, [0] * _LANES)
        sums = [cgutils.alloca_once_value(builder, no_sum) for _ in range(rows)]
        with cgutils.for_range_slice(builder, const(0), head_dim, const(_LANES)) as (
            c,
            _,
        ):
            for i, value in enumerate(scaled_rows(c)):
                x = _to_integers(builder, builder.fmul(value, inverses[i]))
                at = y.address(const(i), c, _NARROW)
                builder.store(builder.trunc(x, _NARROW), at, align=2)
                builder.store(builder.add(builder.load(sums[i]), x), sums[i])
        totals = _across_rows(builder, [builder.load(total) for total in sums], "add")
        # What `qk_codes` needs after its sums, lane k for row k * rows / 8
        # (the lanes of its folded sums): 128 sum x (int32), then the step
        # (float32), in row 0 after the codes.
        offsets = ir.Constant(_DWORDS, None)
        step_lanes = ir.Constant(_FLOATS, None)
        for k in range(_LANES):
            i = k * rows // _LANES
            offset = builder.mul(totals[i], ir.Constant(_I32, 128))
            lane = ir.Constant(_I32, k)
            offsets = builder.insert_element(offsets, offset, lane)
            step_lanes = builder.insert_element(step_lanes, steps[i], lane)
        builder.store(offsets, y.address(const(0), head_dim, _DWORDS), align=4)
        after = builder.add(head_dim, const(2 * _LANES))
        builder.store(step_lanes, y.address(const(0), after, _FLOATS), align=4)
        return context.get_dummy_value()

    return sig, codegen


quantize_query_rows = _quantize_intrinsic(ROWS)
"""``(q_rows, r, scales, words)``: four query rows as integers (njit only;
see `_quantize_typed`)."""

quantize_query_row = _quantize_intrinsic(1)
"""`quantize_query_rows` for the single row `r` (njit only)."""


def _qk_intrinsic(rows: int, keys: int) -> Any:
    """`qk_codes` for `rows` rows by `keys` keys (``rows * keys`` a multiple
    of 8: whole vectors of sums)."""

    @intrinsic
    def tile(
        typingctx: Any, words: Any, codes: Any, t: Any, scores: Any, head_dim: Any
    ) -> Any:
        return _qk_typed(rows, keys, words, codes, t, scores, head_dim)

    return tile


def _qk_typed(
    rows: int, keys: int, words: Any, codes: Any, t: Any, scores: Any,
    head_dim: Any,
) -> Any:  # fmt: skip
    """``scores[i, t + j] = step_i * sum_c x_ic * (codes[t + j, c] - 128)``
    for i < `rows`, j < `keys`, c < `head_dim` (a multiple of 16): the
    logits of i8 keys (their codes from byte 0 of their rows) for the query
    rows that `quantize_query_rows` (or `_row`) left in `words`."""
    _require(2, types.int16, words=words)
    _require(2, types.uint8, codes=codes)
    _require(2, types.float32, scores=scores)
    sig = types.void(words, codes, t, scores, head_dim)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if not available():
            return context.get_dummy_value()  # unreachable (module doc)
        arg_types = signature.args
        y = _Rows(context, builder, arg_types[0], args[0])
        k = _Rows(context, builder, arg_types[1], args[1])
        s = _Rows(context, builder, arg_types[3], args[3])
        token = context.cast(builder, args[2], arg_types[2], types.intp)
        channels = context.cast(builder, args[4], arg_types[4], types.intp)
        intp_type = token.type

        def const(value: int) -> Any:
            return ir.Constant(intp_type, value)

        key_at = [builder.add(token, const(j)) for j in range(keys)]
        no_sum = ir.Constant(_DWORDS, [0] * _LANES)
        # Each vector of sums holds `per_fold` keys of every row:
        # sums[f][per_fold i + j] is row i, key per_fold f + j.
        per_fold = _LANES // rows
        sums = [
            [cgutils.alloca_once_value(builder, no_sum) for _ in range(_LANES)]
            for _ in range(keys // per_fold)
        ]
        loop = cgutils.for_range_slice(builder, const(0), channels, const(16))
        with loop as (c, _):
            key_vectors = [
                builder.bitcast(
                    builder.zext(
                        builder.load(k.address(key, c, _HALF_BYTES), align=1), _WORDS
                    ),
                    _DWORDS,
                )
                for key in key_at
            ]
            for i in range(rows):
                query = builder.load(y.address(const(i), c, _DWORDS), align=2)
                for j, key_vector in enumerate(key_vectors):
                    slot = sums[j // per_fold][per_fold * i + j % per_fold]
                    total = _call(
                        builder, "llvm.x86.avx512.vpdpwssd.256", _DWORDS,
                        builder.load(slot), key_vector, query,
                    )  # fmt: skip
                    builder.store(total, slot)
        offsets = builder.load(y.address(const(0), channels, _DWORDS), align=4)
        after = builder.add(channels, const(2 * _LANES))
        steps = builder.load(y.address(const(0), after, _FLOATS), align=4)
        run = ir.VectorType(_F32, per_fold)
        for f, slots in enumerate(sums):
            folded = _fold_eight(builder, [builder.load(slot) for slot in slots], "add")
            logits = builder.fmul(
                builder.sitofp(builder.sub(folded, offsets), _FLOATS), steps
            )
            for i in range(rows):
                lanes = list(range(per_fold * i, per_fold * (i + 1)))
                row_logits = _shuffle(builder, logits, logits, lanes)
                address = s.address(const(i), key_at[per_fold * f], run)
                builder.store(row_logits, address, align=4)
        return context.get_dummy_value()

    return sig, codegen


qk_codes = _qk_intrinsic(ROWS, KEYS)
"""``(words, codes, t, scores, head_dim)``: the logits of four rows by
`KEYS` keys, four keys sharing each load of the query's integers (with
two, a hot block of 16 took 10 ns a token); njit only."""

qk_codes_row = _qk_intrinsic(1, 8)
"""`qk_codes` for one row by eight keys (njit only)."""


def _pv_intrinsic(rows: int) -> Any:
    """`_pv_typed` for `rows` rows (4 or 1)."""

    @intrinsic
    def span(
        typingctx: Any, weights: Any, value_meta: Any, codes: Any, lo: Any,
        hi: Any, base: Any, acc: Any, r: Any, words: Any,
    ) -> Any:  # fmt: skip
        return _pv_typed(rows, weights, value_meta, codes, lo, hi, base, acc, r, words)

    return span


def _pv_typed(
    rows: int, weights: Any, value_meta: Any, codes: Any, lo: Any, hi: Any,
    base: Any, acc: Any, r: Any, words: Any,
) -> Any:  # fmt: skip
    """See `pv_codes`, for ``hi - lo <= SPAN_TOKENS``; `words` is int16
    scratch ``[4, >= SPAN_TOKENS + 16]``."""
    _require(2, types.float32, weights=weights, acc=acc)
    _require(1, types.float32, value_meta=value_meta)
    _require(2, types.uint8, codes=codes)
    _require(2, types.int16, words=words)
    sig = types.void(weights, value_meta, codes, lo, hi, base, acc, r, words)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if not available():
            return context.get_dummy_value()  # unreachable (module doc)
        arg_types = signature.args
        p = _Rows(context, builder, arg_types[0], args[0])
        v = _Rows(context, builder, arg_types[2], args[2])
        out = _Rows(context, builder, arg_types[6], args[6])
        y = _Rows(context, builder, arg_types[8], args[8])
        meta = context.make_array(arg_types[1])(context, builder, args[1])
        meta_data = builder.bitcast(meta.data, _F32.as_pointer())

        def intp(k: int) -> Any:
            return context.cast(builder, args[k], arg_types[k], types.intp)

        span_lo, span_hi, column, row = intp(3), intp(4), intp(5), intp(7)
        intp_type = span_lo.type

        def const(value: int) -> Any:
            return ir.Constant(intp_type, value)

        # Whole vectors of eight tokens from `start`; lanes outside the
        # span weigh nothing (whatever the scratch holds there).
        start = builder.and_(span_lo, const(-_LANES))
        stop = builder.and_(builder.add(span_hi, const(_LANES - 1)), const(-_LANES))
        token_lanes = ir.VectorType(intp_type, _LANES)
        lane_ids = ir.Constant(token_lanes, list(range(_LANES)))
        zeros = ir.Constant(_FLOATS, [0.0] * _LANES)
        span_lows = _splat(builder, span_lo, token_lanes)
        span_highs = _splat(builder, span_hi, token_lanes)

        def token_weights(t: Any) -> list[Any]:
            """Each row's ``w = p * scale`` of tokens t .. t + 8, 0 outside
            the span."""
            pairs = builder.load(
                builder.bitcast(
                    builder.gep(meta_data, [builder.shl(t, const(1))]),
                    ir.VectorType(_F32, 2 * _LANES).as_pointer(),
                ),
                align=4,
            )
            scales = _shuffle(builder, pairs, pairs, list(range(0, 2 * _LANES, 2)))
            tokens = builder.add(_splat(builder, t, token_lanes), lane_ids)
            inside = builder.and_(
                builder.icmp_signed(">=", tokens, span_lows),
                builder.icmp_signed("<", tokens, span_highs),
            )
            return [
                builder.select(
                    inside,
                    builder.fmul(
                        builder.load(p.address(const(i), t, _FLOATS), align=4), scales
                    ),
                    zeros,
                )
                for i in range(rows)
            ]

        tops = [cgutils.alloca_once_value(builder, zeros) for _ in range(rows)]
        with cgutils.for_range_slice(builder, start, stop, const(_LANES)) as (t, _):
            for top, w in zip(tops, token_weights(t), strict=True):
                builder.store(_combine(builder, "max", w, builder.load(top)), top)
        largest = _across_rows(builder, [builder.load(top) for top in tops], "max")
        inverses, steps = _integer_steps(builder, largest)
        no_sum = ir.Constant(_DWORDS, [0] * _LANES)
        sums = [cgutils.alloca_once_value(builder, no_sum) for _ in range(rows)]
        with cgutils.for_range_slice(builder, start, stop, const(_LANES)) as (t, _):
            for i, w in enumerate(token_weights(t)):
                x = _to_integers(builder, builder.fmul(w, inverses[i]))
                at = y.address(const(i), builder.sub(t, start), _NARROW)
                builder.store(builder.trunc(x, _NARROW), at, align=2)
                builder.store(builder.add(builder.load(sums[i]), x), sums[i])
        totals = _across_rows(builder, [builder.load(total) for total in sums], "add")
        offsets = [
            _splat(builder, builder.mul(total, ir.Constant(_I32, -128)), _DWORDS)
            for total in totals
        ]
        step_splats = [_splat(builder, step, _FLOATS) for step in steps]

        count = builder.lshr(builder.sub(stop, start), const(1))
        rows_at = [builder.add(row, const(i)) for i in range(rows)]
        chunks = cgutils.for_range_slice(
            builder, const(0), out.columns, const(CHANNELS)
        )
        with chunks as (d, _):
            # sums_at[i][j]: row i, the channels of unpacked vector j
            sums_at = [
                [cgutils.alloca_once_value(builder, no_sum) for _ in range(4)]
                for _ in range(rows)
            ]
            with cgutils.for_range(builder, count) as loop:
                pair_column = builder.shl(loop.index, const(1))
                t = builder.add(start, pair_column)
                at = builder.add(column, d)
                halves = []
                for token in (t, builder.add(t, const(1))):
                    for part in (0, 16):
                        address = v.address(
                            token, builder.add(at, const(part)), _HALF_BYTES
                        )
                        loaded = builder.load(address, align=1)
                        halves.append(builder.zext(loaded, _WORDS))
                # halves: t's channels 0-15, 16-31, then t + 1's.
                vectors = [
                    builder.bitcast(
                        _shuffle(builder, halves[q], halves[q + 2], order), _DWORDS
                    )
                    for q in (0, 1)
                    for order in (_UNPACK_LOW, _UNPACK_HIGH)
                ]
                for i in range(rows):
                    pair = builder.load(y.address(const(i), pair_column, _I32), align=4)
                    weight = _splat(builder, pair, _DWORDS)
                    for j, vector in enumerate(vectors):
                        slot = sums_at[i][j]
                        total = _call(
                            builder, "llvm.x86.avx512.vpdpwssd.256", _DWORDS,
                            builder.load(slot), vector, weight,
                        )  # fmt: skip
                        builder.store(total, slot)
            for i in range(rows):
                floats = [
                    builder.sitofp(builder.add(builder.load(slot), offsets[i]), _FLOATS)
                    for slot in sums_at[i]
                ]
                in_order = [
                    _shuffle(builder, floats[q], floats[q + 1], order)
                    for q in (0, 2)
                    for order in (_CHANNELS_LOW, _CHANNELS_HIGH)
                ]
                for m, vector in enumerate(in_order):
                    channel = builder.add(d, const(_LANES * m))
                    address = out.address(rows_at[i], channel, _FLOATS)
                    so_far = builder.load(address, align=4)
                    updated = _call(
                        builder, "llvm.fmuladd.v8f32", _FLOATS, vector,
                        step_splats[i], so_far,
                    )  # fmt: skip
                    builder.store(updated, address, align=4)
        return context.get_dummy_value()

    return sig, codegen


_pv_span = _pv_intrinsic(ROWS)
_pv_span_row = _pv_intrinsic(1)


@njit(inline="always", cache=True)
def pv_codes(
    weights: Any,  # f32 [>= rows, block_size]: the rows' softmax weights
    codes: Any,  # uint8 [block_size, row_bytes]: a block's rows
    lo: Any,
    hi: Any,
    acc: Any,  # f32 [rows, D]
    r: Any,
    base: Any,  # the value codes' first byte in a row
    value_meta: Any,  # f32 [2 block_size]: token t's value scale at [2 t]
    words: Any,  # int16 [4, SPAN_TOKENS + 16]: scratch
    rows: Any,  # 4, or 1
) -> None:
    """``acc[r + i] += weights[i, lo:hi] @ values[lo:hi]`` for i < `rows`
    over an i8 block's value codes, in 15-bit integer weights (module doc).
    The block size is a multiple of 8: the weights, scales and codes of
    whole eights of tokens around ``lo:hi`` are read (and weigh nothing)."""
    for span_lo in range(lo, hi, SPAN_TOKENS):
        span_hi = min(hi, span_lo + SPAN_TOKENS)
        if rows == 1:
            _pv_span_row(
                weights, value_meta, codes, span_lo, span_hi, base, acc, r, words
            )  # pyright: ignore[reportCallIssue]
        else:
            _pv_span(weights, value_meta, codes, span_lo, span_hi, base, acc, r, words)  # pyright: ignore[reportCallIssue]
