"""Vector micro-kernels of the attention kernels, written as LLVM IR.

A GQA group of four query rows shares every K/V block it reads, so its work
per block is two small matrix products: ``S = Q K^T`` ([4, D] by [D,
tokens]) and ``acc += P V`` ([4, tokens] by [tokens, D]).  LLVM's loop
vectorizer does not find a good schedule for either from Numba code: it
cannot prove the accumulator rows apart, so ``P V`` goes row by row,
converting each half-precision element of V once per row; and every dot
product of ``Q K^T`` ends in its own horizontal sum.  Here both are spelled
out over ``<8 x float>`` vectors (one AVX2 register):

* `qk_tile` keeps the dot products of four rows by two keys in eight vector
  accumulators over the channels and reduces all eight into one vector of
  sums with one shuffle tree (7 adds instead of 8 x 3);
* `pv_tile` keeps four rows by 16 channels of the accumulator in eight
  vector registers across every token of the block, so each element of V
  is loaded and converted once per four rows, and the accumulator is read
  and written once per block.

Both prefetch, line by line as they read a block, the same lines of the
next block (`ahead` bytes further), spread over the arithmetic: in float32
GQA decode 1.1-1.3x faster than a burst of prefetches per score tile or
per 16 tokens of ``P V`` (`_attend_block_group` in `attention_kernels`).

Prefill reads each block with many fours of rows, so it transposes the
block's keys once (`transpose_block`, 8 x 8 shuffles) and takes the scores
from `qk_columns`: four rows by 16 keys lying across the lanes, one
multiply-add per channel and no horizontal sum.  The softmax of a tile
runs its rows side by side: `row_maxima` and `row_exponentials` (the same
float32 exp as the scalar `exp_nonpositive`, eight lanes at a time); a
soft cap first goes through `cap_rows`, a float32 tanh eight lanes at a
time.

`qk_row` and `pv_row` are the single-row forms (one row by eight keys, by
32 channels), for quantized MHA decode, whose codes' conversions make a
row bound by arithmetic.  A half-precision MHA row takes `qk_row_stream`
and `pv_row_stream` instead: they read the rows of a block whole and in
order, one sequential stream as memory serves it best (`qk_row`'s eight
interleaved rows measured slower there), keep up to 128 channels of the
accumulator in registers, and prefetch, line by line as they read, the
same line of the block two ahead.  Float32 rows keep the kernel's
streaming loop: bound by memory, they measured no faster through these.

The stored elements are float32, IEEE half / bfloat16 bit patterns
(uint16) converted on load (``fpext`` from ``half``, ``vcvtph2ps`` with
F16C, or a 16-bit shift), or the unsigned codes of a quantized block
(uint8; i4: two per byte, `_load_nibbles`), whose scales and offsets the
caller folds into the query rows (keys), or the ``P V`` tile applies as
it loads them (values: per token and group, so decoded in registers once
for all rows; one i8 row folds the scale into its weight instead).
`halves_to_f32` converts a quantized block's float16 scales, eight per
load (`band_to_f32` the key scales of blocks whose rows hold one to four,
eight rows at a time; `rows_to_f32` rows of eight or sixteen, one load a
row), and `scale_query_rows` folds the key scales into the query rows
once per block; `token_ranges` and `token_group_ranges` give the
extremes that quantising an append needs (per channel over a run's tokens,
per group of each token: eight groups of 16 folded at once), addressing
the tokens' rows in place.  Multiply-adds are ``llvm.fmuladd``: fused
where the CPU has FMA, a multiply and an add elsewhere.  Sums are
reordered relative to a sequential loop, as the kernels' ``reassoc`` flag
allows.

Preconditions, checked by the callers: rows of every array are contiguous,
the head dimension is a multiple of `CHANNELS` (of 32 for the single-row
tiles and for i4 codes), and the rows and keys a tile names exist.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types  # pyright: ignore[reportUnknownVariableType]
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from llmir.runtime.dtypes import F16_CODE, I4, I8_CODE

_I4_QUANT = I4.quant
assert _I4_QUANT is not None and _I4_QUANT.value_group is not None
I4_GROUP = _I4_QUANT.value_group
"""Channels per value scale of i4 codes, a compile-time constant of the
kernels (divisions by it become shifts: 1.4x faster than a runtime group in
the earlier scalar i4 kernel); the ``P V`` tile reads one scale and offset
per group and token."""

LANES = 8
"""float32 lanes of one vector: an AVX2 register."""

CHANNELS = 2 * LANES
"""Channels of the ``P V`` accumulator tile: the head dimension must be a
multiple of it."""

ROWS = 4
"""Query rows of one tile: a GQA group of four, or four of a larger one."""

_F32 = ir.FloatType()
_VEC = ir.VectorType(_F32, LANES)
_I8_PTR = ir.IntType(8).as_pointer()
_I32 = ir.IntType(32)
_LANE_INDICES = ir.VectorType(_I32, LANES)


def _storage(array: Any) -> str:
    """'f32', or 'u16' for half-precision bit patterns (the caller names
    the format)."""
    if not isinstance(array, types.Array) or array.ndim != 2 or array.layout != "C":
        raise TypingError(f"expected a C-contiguous 2D array, got {array}")
    if array.dtype == types.float32:
        return "f32"
    if array.dtype == types.uint16:
        return "u16"
    if array.dtype == types.uint8:
        return "u8"
    raise TypingError(f"expected float32, uint16 or uint8 elements, got {array.dtype}")


_FORMATS = {"u16": ("f16", "bf16"), "u8": ("i8", "i4")}
"""The formats each integer storage can hold, named by a string literal."""


def _element_format(element: Any, storage: str) -> str:
    """The stored format: float32 storage is 'f32'; uint16 storage names its
    format, 'f16' or 'bf16', and uint8 storage 'i8' or 'i4' (quantized
    codes, `llmir.runtime.quantization`), as a string literal."""
    if storage == "f32":
        return "f32"
    formats = _FORMATS[storage]
    if (
        not isinstance(element, types.StringLiteral)
        or element.literal_value not in formats
    ):
        raise TypingError(f"{storage} storage needs one of {formats}, got {element}")
    return element.literal_value


class _Rows:
    """Addresses in a C-contiguous 2D array (its rows are contiguous)."""

    def __init__(self, context: Any, builder: Any, array_type: Any, value: Any):
        array = context.make_array(array_type)(context, builder, value)
        self.builder = builder
        self.intp = context.get_value_type(types.intp)
        self.data = builder.bitcast(array.data, _I8_PTR)
        self.stride = builder.extract_value(array.strides, 0)
        self.columns = builder.extract_value(array.shape, 1)
        dtype = context.get_data_type(array_type.dtype)
        self.itemsize = context.get_abi_sizeof(dtype)

    def index(self, value: int) -> Any:
        return ir.Constant(self.intp, value)

    def address(self, row: Any, column: Any, pointee: Any = _F32) -> Any:
        """A `pointee` pointer to element ``[row, column]``."""
        b = self.builder
        offset = b.add(
            b.mul(row, self.stride), b.mul(column, self.index(self.itemsize))
        )
        return b.bitcast(b.gep(self.data, [offset]), pointee.as_pointer())


_BYTES = ir.VectorType(ir.IntType(8), LANES)
_WORDS = ir.VectorType(_I32, LANES)


def _load_vector(builder: Any, rows: _Rows, row: Any, column: Any, element: str) -> Any:
    """Eight consecutive stored elements from ``[row, column]`` on, as
    ``<8 x float>`` (i8: the unsigned codes, whose offset the caller adds)."""
    if element == "f32":
        return builder.load(rows.address(row, column, _VEC), align=4)
    if element == "i8":
        codes = builder.load(rows.address(row, column, _BYTES), align=1)
        return builder.uitofp(builder.zext(codes, _WORDS), _VEC)
    bits_type = ir.VectorType(ir.IntType(16), LANES)
    bits = builder.load(rows.address(row, column, bits_type), align=2)
    if element == "f16":
        halves = builder.bitcast(bits, ir.VectorType(ir.HalfType(), LANES))
        return builder.fpext(halves, _VEC)
    wide = builder.zext(bits, ir.VectorType(_I32, LANES))
    return builder.bitcast(
        builder.shl(wide, ir.Constant(wide.type, [16] * LANES)), _VEC
    )


def _load_nibbles(builder: Any, rows: _Rows, row: Any, column: Any) -> Any:
    """The i4 codes of eight consecutive bytes from ``[row, column]`` on, as
    two ``<8 x float>``: the low nibbles, then the high ones."""
    codes = builder.zext(
        builder.load(rows.address(row, column, _BYTES), align=1), _WORDS
    )
    low = builder.and_(codes, ir.Constant(_WORDS, [0x0F] * LANES))
    high = builder.lshr(codes, ir.Constant(_WORDS, [4] * LANES))
    return builder.uitofp(low, _VEC), builder.uitofp(high, _VEC)


def _splat(builder: Any, scalar: Any) -> Any:
    undefined = ir.Constant(_VEC, None)
    one = builder.insert_element(undefined, scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(
        one, undefined, ir.Constant(_LANE_INDICES, [0] * LANES)
    )


def _float_call(builder: Any, name: str, *operands: Any) -> Any:
    """``llvm.<name>`` on floats or float vectors (the operands' type); the
    callers' values are finite (the caches refuse inf and NaN), so
    ``minnum``/``maxnum`` need no NaN care."""
    value_type = operands[0].type
    suffix = f"v{LANES}f32" if value_type == _VEC else "f32"
    fnty = ir.FunctionType(value_type, [value_type] * len(operands))
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.{name}.{suffix}")
    return builder.call(fn, list(operands))


def _fmuladd(builder: Any, a: Any, b: Any, c: Any) -> Any:
    return _float_call(builder, "fmuladd", a, b, c)


def _combine(builder: Any, kind: str, a: Any, b: Any) -> Any:
    """`a` and `b` folded by `kind`: "fadd"; "add" (integers); "min" and
    "max" as a compare and a select (one ``vminps``/``vmaxps``: the finite
    values of an append's ranges need none of the NaN fix-ups LLVM adds
    around ``minnum``, which tripled the dependency chain of a range); or an
    ``llvm.<kind>`` call."""
    if kind == "fadd":
        return builder.fadd(a, b)
    if kind == "add":
        return builder.add(a, b)
    if kind in ("min", "max"):
        keep_a = builder.fcmp_ordered("<" if kind == "min" else ">", a, b)
        return builder.select(keep_a, a, b)
    return _float_call(builder, kind, a, b)


def _accumulate(builder: Any, slot: Any, a: Any, b: Any) -> None:
    """``*slot += a * b`` (an alloca that LLVM keeps in a register)."""
    builder.store(_fmuladd(builder, a, b, builder.load(slot)), slot)


def _fold_eight(builder: Any, vectors: list[Any], kind: str = "fadd") -> Any:
    """One vector whose lane i folds the lanes of ``vectors[i]`` by `kind`
    (a `_combine` kind): a transposing tree of shuffles."""

    def fold(a: Any, b: Any, first: list[int], second: list[int]) -> Any:
        left = builder.shuffle_vector(a, b, ir.Constant(_LANE_INDICES, first))
        right = builder.shuffle_vector(a, b, ir.Constant(_LANE_INDICES, second))
        return _combine(builder, kind, left, right)

    evens, odds = [0, 8, 2, 10, 4, 12, 6, 14], [1, 9, 3, 11, 5, 13, 7, 15]
    pairs = [fold(vectors[i], vectors[i + 1], evens, odds) for i in range(0, 8, 2)]
    # pairs[k] lanes: A01 B01 A23 B23 A45 B45 A67 B67 (A, B: vectors 2k, 2k+1)
    lows, highs = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    quads = [fold(pairs[i], pairs[i + 1], lows, highs) for i in (0, 2)]
    # quads[k] lanes: A0-3 B0-3 C0-3 D0-3 A4-7 B4-7 C4-7 D4-7
    halves = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return fold(quads[0], quads[1], *halves)


def _vector_slots(builder: Any, count: int) -> list[Any]:
    return [cgutils.alloca_once(builder, _VEC) for _ in range(count)]


def _float_1d(array: Any, contiguous: bool = False) -> bool:
    """Whether `array` is a 1D float32 array (C-contiguous if asked)."""
    return (
        isinstance(array, types.Array)
        and array.ndim == 1
        and array.dtype == types.float32
        and (array.layout == "C" or not contiguous)
    )


class _Elements:
    """Addresses in a 1D float32 array of any stride (the rows of 2D arrays
    are `_Rows`); a C-contiguous one is indexed without the multiply by its
    stride (measured 5-10% on the four-row i4 tile, which reads the value
    scales per token)."""

    def __init__(self, context: Any, builder: Any, array_type: Any, value: Any):
        array = context.make_array(array_type)(context, builder, value)
        self.builder = builder
        self.unit_stride = array_type.layout == "C"
        self.data = builder.bitcast(
            array.data, _F32.as_pointer() if self.unit_stride else _I8_PTR
        )
        self.size = builder.extract_value(array.shape, 0)
        self.stride = builder.extract_value(array.strides, 0)

    @classmethod
    def token_row(
        cls, context: Any, builder: Any, array_type: Any, value: Any, token: Any,
        head: Any,
    ) -> _Elements:  # fmt: skip
        """Row ``[token, head, :]`` of a C-contiguous 3D float32 array,
        addressed in place (no view: a view is a reference count)."""
        array = context.make_array(array_type)(context, builder, value)
        strides = cgutils.unpack_tuple(builder, array.strides)
        offset = builder.add(
            builder.mul(token, strides[0]), builder.mul(head, strides[1])
        )
        start = builder.gep(builder.bitcast(array.data, _I8_PTR), [offset])
        size = builder.extract_value(array.shape, 2)
        return cls._unit(builder, builder.bitcast(start, _F32.as_pointer()), size)

    @classmethod
    def _unit(cls, builder: Any, data: Any, size: Any) -> _Elements:
        elements = cls.__new__(cls)
        elements.builder = builder
        elements.unit_stride = True
        elements.data = data
        elements.size = size
        elements.stride = ir.Constant(size.type, 4)
        return elements

    def shifted(self, first: Any) -> _Elements:
        """Elements ``first ..`` of a contiguous array."""
        assert self.unit_stride
        rest = self.builder.sub(self.size, first)
        return self._unit(self.builder, self.builder.gep(self.data, [first]), rest)

    def address(self, index: Any, pointee: Any) -> Any:
        b = self.builder
        offset = index if self.unit_stride else b.mul(index, self.stride)
        return b.bitcast(b.gep(self.data, [offset]), pointee.as_pointer())

    def contiguous(self) -> Any:
        if self.unit_stride:
            return ir.Constant(ir.IntType(1), 1)
        return self.builder.icmp_signed(
            "==", self.stride, ir.Constant(self.stride.type, 4)
        )


def _score_operands(
    context: Any, builder: Any, signature: Any, args: Any
) -> tuple[_Rows, _Rows, _Rows, Any, Any]:
    """The operands of a ``(q_rows, r, keys, t, scores, ...)`` score tile:
    the three arrays' rows, then `r` and `t` as intp."""
    arg_types = signature.args
    q, k, s = (_Rows(context, builder, arg_types[i], args[i]) for i in (0, 2, 4))
    row, token = (
        context.cast(builder, args[i], arg_types[i], types.intp) for i in (1, 3)
    )
    return q, k, s, row, token


def _qk_intrinsic(rows: int, keys: int) -> Any:
    """The ``Q K^T`` tile of `rows` query rows by `keys` keys (``rows * keys
    == LANES``: one shuffle tree reduces all the dot products).  A tile of
    two float keys prefetches, one line per step of eight channels, the
    line `ahead` bytes past the one it reads (0: none; the steps alternate
    between the two keys, so in float32 each line of both is prefetched
    once)."""

    @intrinsic
    def tile(
        typingctx: Any,
        q_rows: Any,
        r: Any,
        key_rows: Any,
        t: Any,
        scores: Any,
        ahead: Any,
        element: Any,
    ) -> Any:
        stored = _element_format(element, _storage(key_rows))
        if _storage(q_rows) != "f32" or _storage(scores) != "f32":
            raise TypingError("q_rows and scores must be float32")
        sig = types.void(q_rows, r, key_rows, t, scores, ahead, element)
        prefetches = keys == 2 and stored in ("f32", "f16", "bf16")

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            q, k, s, row, token = _score_operands(context, builder, signature, args)
            ahead_bytes = context.cast(builder, args[5], signature.args[5], types.intp)
            wanted = builder.icmp_signed("!=", ahead_bytes, q.index(0))
            slots = [builder.add(token, k.index(j)) for j in range(keys)]
            q_rows_at = [builder.add(row, q.index(i)) for i in range(rows)]
            # accumulators[keys * i + j]: row i, key j
            accumulators = _vector_slots(builder, rows * keys)
            for slot in accumulators:
                builder.store(ir.Constant(_VEC, [0.0] * LANES), slot)
            # i4 codes: byte j holds channels j and j + D/2 (`_load_nibbles`).
            half = builder.lshr(q.columns, q.index(1))
            span = half if stored == "i4" else q.columns
            loop = cgutils.for_range_slice(builder, q.index(0), span, q.index(LANES))
            with loop as (d, _):
                if stored == "i4":
                    high_d = builder.add(d, half)
                    key_vectors = [_load_nibbles(builder, k, tk, d) for tk in slots]
                    for i, q_row in enumerate(q_rows_at):
                        q_low = _load_vector(builder, q, q_row, d, "f32")
                        q_high = _load_vector(builder, q, q_row, high_d, "f32")
                        for j, (k_low, k_high) in enumerate(key_vectors):
                            slot = accumulators[keys * i + j]
                            _accumulate(builder, slot, q_low, k_low)
                            _accumulate(builder, slot, q_high, k_high)
                else:
                    if prefetches:
                        odd_step = builder.icmp_signed(
                            "!=", builder.and_(d, q.index(LANES)), q.index(0)
                        )
                        key = builder.select(odd_step, slots[1], slots[0])
                        with builder.if_then(wanted, likely=True):
                            _prefetch_ahead(builder, k, key, d, ahead_bytes)
                    key_vectors = [
                        _load_vector(builder, k, tk, d, stored) for tk in slots
                    ]
                    for i, q_row in enumerate(q_rows_at):
                        q_i = _load_vector(builder, q, q_row, d, "f32")
                        for j, k_j in enumerate(key_vectors):
                            _accumulate(builder, accumulators[keys * i + j], q_i, k_j)
            sums = _fold_eight(builder, [builder.load(slot) for slot in accumulators])
            if rows == 1:
                builder.store(sums, s.address(s.index(0), token, _VEC), align=4)
                return context.get_dummy_value()
            for i in range(rows):
                for j, tk in enumerate(slots):
                    lane = ir.Constant(_I32, keys * i + j)
                    address = s.address(s.index(i), tk)
                    builder.store(builder.extract_element(sums, lane), address)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_qk_tile = _qk_intrinsic(ROWS, 2)
"""``scores[i, t + j] = q_rows[r + i] . keys[t + j]`` for i < 4, j < 2."""

_qk_row = _qk_intrinsic(1, LANES)
"""``scores[0, t + j] = q_rows[r] . keys[t + j]`` for j < 8."""


def _qk_columns_intrinsic(rows: int, vectors: int) -> Any:
    """The ``Q K^T`` tile of `rows` query rows by ``vectors * LANES``
    consecutive keys of a transposed block (``[D, tokens]``, float32): the
    keys lie across the lanes, so each channel is one multiply-add per row
    and vector, and no dot product ends in a horizontal sum."""

    @intrinsic
    def tile(
        typingctx: Any, q_rows: Any, r: Any, keys_t: Any, t: Any, scores: Any
    ) -> Any:
        if not all(_storage(a) == "f32" for a in (q_rows, keys_t, scores)):
            raise TypingError("q_rows, keys_t and scores must be float32")
        sig = types.void(q_rows, r, keys_t, t, scores)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            q, k, s, row, token = _score_operands(context, builder, signature, args)
            q_rows_at = [builder.add(row, q.index(i)) for i in range(rows)]
            columns = [builder.add(token, k.index(LANES * c)) for c in range(vectors)]
            # accumulators[vectors * i + c]: row i, keys of vector c
            accumulators = _vector_slots(builder, rows * vectors)
            for slot in accumulators:
                builder.store(ir.Constant(_VEC, [0.0] * LANES), slot)
            loop = cgutils.for_range_slice(builder, q.index(0), q.columns, q.index(1))
            with loop as (d, _):
                key_vectors = [
                    builder.load(k.address(d, column, _VEC), align=4)
                    for column in columns
                ]
                for i, q_row in enumerate(q_rows_at):
                    q_i = _splat(builder, builder.load(q.address(q_row, d), align=4))
                    for c, key_vector in enumerate(key_vectors):
                        _accumulate(
                            builder, accumulators[vectors * i + c], q_i, key_vector
                        )
            for i in range(rows):
                for c, column in enumerate(columns):
                    address = s.address(s.index(i), column, _VEC)
                    vector = builder.load(accumulators[vectors * i + c])
                    builder.store(vector, address, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _transpose_eight(builder: Any, rows: list[Any]) -> list[Any]:
    """The 8 x 8 transpose of eight vectors (unpacks, in-lane shuffles, then
    128-bit lane swaps: 24 shuffles)."""

    def shuffle(a: Any, b: Any, lanes: list[int]) -> Any:
        return builder.shuffle_vector(a, b, ir.Constant(_LANE_INDICES, lanes))

    low, high = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    pairs = []
    for j in range(0, 8, 2):
        pairs += [
            shuffle(rows[j], rows[j + 1], low),
            shuffle(rows[j], rows[j + 1], high),
        ]
    # pairs[4k + h]: rows 2k, 2k+1 (k < 2), h 0: channels 0 1 4 5, 1: 2 3 6 7
    evens, odds = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    quads = []
    for base in (0, 4):
        for h in (0, 1):
            a, b = pairs[base + h], pairs[base + 2 + h]
            quads += [shuffle(a, b, evens), shuffle(a, b, odds)]
    # quads[4m + c]: rows 4m..4m+3, channels c and c + 4 (c < 4)
    first, second = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    columns = [shuffle(quads[c], quads[4 + c], first) for c in range(4)]
    return columns + [shuffle(quads[c], quads[4 + c], second) for c in range(4)]


@intrinsic
def transpose_block(typingctx: Any, keys: Any, lo: Any, hi: Any, keys_t: Any) -> Any:
    """``keys_t[:, t] = keys[t]`` for the slots of ``lo:hi`` widened to whole
    eights (float32 ``[tokens, D]`` into ``[D, tokens]``, whose rows may lie
    apart; both dimensions multiples of eight; njit only)."""
    # keys_t may be a view of a wider array (columns of a span of blocks):
    # its rows are addressed by their stride.
    target = keys_t.copy(layout="C") if isinstance(keys_t, types.Array) else keys_t
    if _storage(keys) != "f32" or _storage(target) != "f32":
        raise TypingError("keys and keys_t must be float32")
    sig = types.void(keys, lo, hi, keys_t)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        source = _Rows(context, builder, signature.args[0], args[0])
        target = _Rows(context, builder, signature.args[3], args[3])
        first, last = (
            context.cast(builder, args[k], signature.args[k], types.intp)
            for k in (1, 2)
        )
        eight = source.index(LANES)
        start = builder.and_(first, source.index(-LANES))
        stop = builder.and_(
            builder.add(last, source.index(LANES - 1)), source.index(-LANES)
        )
        with cgutils.for_range_slice(builder, start, stop, eight) as (t, _):
            channels = cgutils.for_range_slice(
                builder, source.index(0), source.columns, eight
            )
            with channels as (d, _):
                rows = [
                    builder.load(
                        source.address(builder.add(t, source.index(j)), d, _VEC),
                        align=4,
                    )
                    for j in range(LANES)
                ]
                for m, column in enumerate(_transpose_eight(builder, rows)):
                    channel = builder.add(d, source.index(m))
                    builder.store(column, target.address(channel, t, _VEC), align=4)
        return context.get_dummy_value()

    return sig, codegen


COLUMN_KEYS = 2 * LANES
"""Keys of one `qk_columns` tile."""

qk_columns = _qk_columns_intrinsic(ROWS, COLUMN_KEYS // LANES)
"""``scores[i, t:t + 16] = q_rows[r + i] @ keys_t[:, t:t + 16]`` for i < 4,
`keys_t` a transposed float32 block (njit only)."""


def _pv_intrinsic(rows: int, vectors: int) -> Any:
    """The ``P V`` tile of `rows` accumulator rows by ``vectors * LANES``
    channels, held in registers across the tokens of a block.  A tile of
    several rows over float values prefetches, for each token of a chunk,
    the line `ahead` bytes past its first channel (0: none; in float32,
    with 16 channels a chunk, every line of the values once)."""
    # An i4 chunk reads ``vectors / 2`` loads of eight bytes; its low and
    # its high channels must each lie within one value group.
    assert I4_GROUP % (LANES * vectors // 2) == 0

    @intrinsic
    def tile(
        typingctx: Any,
        weights: Any,
        values: Any,
        lo: Any,
        hi: Any,
        acc: Any,
        r: Any,
        base: Any,
        value_meta: Any,
        ahead: Any,
        element: Any,
    ) -> Any:
        stored = _element_format(element, _storage(values))
        if _storage(weights) != "f32" or _storage(acc) != "f32":
            raise TypingError("weights and acc must be float32")
        if not _float_1d(value_meta):
            raise TypingError(f"value_meta must be 1D float32, got {value_meta}")
        sig = types.void(
            weights, values, lo, hi, acc, r, base, value_meta, ahead, element
        )

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            arg_types = signature.args
            w = _Rows(context, builder, arg_types[0], args[0])
            v = _Rows(context, builder, arg_types[1], args[1])
            out = _Rows(context, builder, arg_types[4], args[4])
            meta = _Elements(context, builder, arg_types[7], args[7])

            def intp(position: int) -> Any:
                return context.cast(
                    builder, args[position], arg_types[position], types.intp
                )

            lo_value, hi_value, row, base_column = intp(2), intp(3), intp(5), intp(6)
            ahead_bytes = intp(8)
            wanted = builder.icmp_signed("!=", ahead_bytes, out.index(0))
            acc_rows = [builder.add(row, out.index(i)) for i in range(rows)]
            head_dim = out.columns
            half = builder.lshr(head_dim, out.index(1))
            quantized = stored in ("i8", "i4")
            prefetches = rows > 1 and not quantized
            nibbles = stored == "i4"
            # Per chunk: the code columns read (i4: each byte feeds a low and
            # a high vector, which may lie in different value groups).
            loads = vectors // 2 if nibbles else vectors
            span = half if nibbles else head_dim
            group_shift = out.index(I4_GROUP.bit_length() - 1)
            groups = builder.lshr(head_dim, group_shift) if nibbles else out.index(1)
            # tile[vectors * i + c]: row i, the channels of vector c
            tile_slots = _vector_slots(builder, rows * vectors)
            folded = stored == "i8" and rows == 1
            offset_sum = cgutils.alloca_once(builder, _F32) if folded else None
            chunks = cgutils.for_range_slice(
                builder, out.index(0), span, out.index(LANES * loads)
            )
            with chunks as (d, _):
                columns = [builder.add(d, out.index(LANES * c)) for c in range(loads)]
                channels = columns + (
                    [builder.add(half, column) for column in columns] if nibbles else []
                )
                # The value group of each vector: i4 low ones, then high ones.
                if nibbles:
                    chunk_groups = [
                        builder.lshr(channel, group_shift)
                        for channel in (d, channels[loads])
                    ]
                else:
                    chunk_groups = [out.index(0)]
                vector_group = [c // loads if nibbles else 0 for c in range(vectors)]
                for i in range(rows):
                    for c, channel in enumerate(channels):
                        vector = _load_vector(builder, out, acc_rows[i], channel, "f32")
                        builder.store(vector, tile_slots[vectors * i + c])
                if folded:
                    builder.store(ir.Constant(_F32, 0.0), offset_sum)
                tokens = cgutils.for_range_slice(
                    builder, lo_value, hi_value, v.index(1)
                )
                with tokens as (t, _):
                    code_columns = [builder.add(base_column, c) for c in columns]
                    if prefetches:
                        with builder.if_then(wanted, likely=True):
                            _prefetch_ahead(builder, v, t, code_columns[0], ahead_bytes)
                    if nibbles:
                        pairs = [_load_nibbles(builder, v, t, c) for c in code_columns]
                        value_vectors = [low for low, _ in pairs] + [
                            high for _, high in pairs
                        ]
                    else:
                        value_vectors = [
                            _load_vector(builder, v, t, c, stored) for c in code_columns
                        ]
                    row_weights = [
                        builder.load(w.address(w.index(i), t)) for i in range(rows)
                    ]
                    if folded:
                        # One row and one value group per token: the scale
                        # goes into the weight and the offset into a sum
                        # added once per chunk, ``p (code s + o) = (p s) code
                        # + p o`` (a multiply-add per vector fewer).
                        first = builder.shl(t, out.index(1))
                        scale = builder.load(meta.address(first, _F32))
                        at = builder.add(first, out.index(1))
                        offset = builder.load(meta.address(at, _F32))
                        _accumulate(builder, offset_sum, row_weights[0], offset)
                        row_weights = [builder.fmul(row_weights[0], scale)]
                    elif quantized:
                        # Decode once for all rows: code * scale + offset of
                        # the token's group (the pair at value_meta[2 (t
                        # groups + g)]).
                        first = builder.mul(t, groups)
                        scales, offsets = [], []
                        for group in chunk_groups:
                            at = builder.shl(builder.add(first, group), out.index(1))
                            scale = builder.load(meta.address(at, _F32))
                            at = builder.add(at, out.index(1))
                            offset = builder.load(meta.address(at, _F32))
                            scales.append(_splat(builder, scale))
                            offsets.append(_splat(builder, offset))
                        value_vectors = [
                            _fmuladd(
                                builder,
                                vector,
                                scales[vector_group[c]],
                                offsets[vector_group[c]],
                            )
                            for c, vector in enumerate(value_vectors)
                        ]
                    for i, weight in enumerate(row_weights):
                        p = _splat(builder, weight)
                        for c, value_vector in enumerate(value_vectors):
                            _accumulate(
                                builder, tile_slots[vectors * i + c], p, value_vector
                            )
                if folded:
                    offsets_added = _splat(builder, builder.load(offset_sum))
                    for slot in tile_slots:
                        builder.store(
                            builder.fadd(builder.load(slot), offsets_added), slot
                        )
                for i in range(rows):
                    for c, channel in enumerate(channels):
                        address = out.address(acc_rows[i], channel, _VEC)
                        tile_vector = builder.load(tile_slots[vectors * i + c])
                        builder.store(tile_vector, address, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_pv_tile = _pv_intrinsic(ROWS, CHANNELS // LANES)
"""``acc[r + i] += weights[i, lo:hi] @ values[lo:hi]`` for i < 4, over
`CHANNELS` channels per chunk."""

_pv_row = _pv_intrinsic(1, 4)
"""``acc[r] += weights[0, lo:hi] @ values[lo:hi]`` over 32 channels per
chunk."""


@intrinsic
def _halves_to_f32(
    typingctx: Any,
    src: Any,
    rows: Any,
    byte: Any,
    stride: Any,
    out: Any,
    first: Any,
    spacing: Any,
    count: Any,
) -> Any:
    """For each row ``t`` of the range `rows` (a ``(start, stop)`` tuple) of
    `src` (uint8): ``out[first + (t - start) * spacing + c]`` = the IEEE half
    at byte ``byte + 2 * stride * c`` of row ``t``, for c < `count`
    (`stride` a literal 1 or 2); eight per vector load, the rest one by
    one."""
    if _storage(src) != "u8":
        raise TypingError(f"src must be a C-contiguous 2D uint8 array, got {src}")
    if not _float_1d(out, contiguous=True):
        raise TypingError(f"out must be a contiguous 1D float32 array, got {out}")
    if not isinstance(stride, types.IntegerLiteral) or stride.literal_value not in (
        1,
        2,
    ):
        raise TypingError(f"stride must be a literal 1 or 2, got {stride}")
    if not (isinstance(rows, types.UniTuple) and rows.count == 2):
        raise TypingError(f"rows must be a (start, stop) pair, got {rows}")
    step = stride.literal_value
    sig = types.void(src, rows, byte, stride, out, first, spacing, count)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arg_types = signature.args
        source = _Rows(context, builder, arg_types[0], args[0])
        target = _Elements(context, builder, arg_types[4], args[4])

        def intp(value: Any, value_type: Any) -> Any:
            return context.cast(builder, value, value_type, types.intp)

        row_type = arg_types[1].dtype
        start = intp(builder.extract_value(args[1], 0), row_type)
        stop = intp(builder.extract_value(args[1], 1), row_type)
        byte_at = intp(args[2], arg_types[2])
        first_at = intp(args[5], arg_types[5])
        spacing_at = intp(args[6], arg_types[6])
        total = intp(args[7], arg_types[7])
        whole = builder.and_(total, source.index(-LANES))
        words = ir.VectorType(ir.IntType(16), LANES * step)
        picked = ir.Constant(_LANE_INDICES, [step * c for c in range(LANES)])
        halves = ir.VectorType(ir.HalfType(), LANES)
        source_rows = cgutils.for_range_slice(builder, start, stop, source.index(1))
        with source_rows as (row, _):
            out_at = builder.add(
                first_at, builder.mul(builder.sub(row, start), spacing_at)
            )

            def source_address(c: Any, pointee: Any) -> Any:
                at = builder.add(byte_at, builder.mul(c, source.index(2 * step)))
                return source.address(row, at, pointee)

            vectors = cgutils.for_range_slice(
                builder, source.index(0), whole, source.index(LANES)
            )
            with vectors as (c, _):
                bits = builder.load(source_address(c, words), align=1)
                if step > 1:
                    bits = builder.shuffle_vector(
                        bits, ir.Constant(words, None), picked
                    )
                converted = builder.fpext(builder.bitcast(bits, halves), _VEC)
                builder.store(
                    converted, target.address(builder.add(out_at, c), _VEC), align=4
                )
            rest = cgutils.for_range_slice(builder, whole, total, source.index(1))
            with rest as (c, _):
                bits = builder.load(source_address(c, ir.IntType(16)), align=1)
                converted = builder.fpext(builder.bitcast(bits, ir.HalfType()), _F32)
                builder.store(converted, target.address(builder.add(out_at, c), _F32))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _band_to_f32(
    typingctx: Any,
    src: Any,
    rows: Any,
    byte: Any,
    even: Any,
    odd: Any,
    width: Any,
    paired: Any,
) -> Any:
    """The `width` IEEE halves (a literal 1, 2 or 4) at byte `byte` of rows
    ``0:rows`` of `src` (uint8, `rows` a multiple of 8), in row order, as
    float32: all into `even` (`paired` a literal False), or the even ones
    into `even` and the odd ones into `odd` (True: (scale, offset) pairs).
    Eight rows per vector: each row's halves are one 16-, 32- or 64-bit
    load."""
    if _storage(src) != "u8":
        raise TypingError(f"src must be a C-contiguous 2D uint8 array, got {src}")
    for name, array in (("even", even), ("odd", odd)):
        if not _float_1d(array, contiguous=True):
            raise TypingError(f"{name} must be a contiguous 1D float32 array")
    if not isinstance(width, types.IntegerLiteral) or width.literal_value not in (
        1,
        2,
        4,
    ):
        raise TypingError(f"width must be a literal 1, 2 or 4, got {width}")
    if not isinstance(paired, types.BooleanLiteral) or (
        paired.literal_value and width.literal_value == 1
    ):
        raise TypingError(
            f"paired must be a literal bool (False at width 1), got {paired}"
        )
    halves = width.literal_value
    pairs = paired.literal_value
    sig = types.void(src, rows, byte, even, odd, width, paired)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arg_types = signature.args
        source = _Rows(context, builder, arg_types[0], args[0])
        targets = [_Elements(context, builder, arg_types[i], args[i]) for i in (3, 4)]
        count = context.cast(builder, args[1], arg_types[1], types.intp)
        byte_at = context.cast(builder, args[2], arg_types[2], types.intp)
        row_bits = ir.IntType(16 * halves)
        gathered = ir.VectorType(row_bits, LANES)
        values = LANES * halves
        as_halves = ir.VectorType(ir.HalfType(), values)
        wide = ir.VectorType(_F32, values)
        narrow = ir.VectorType(_F32, values // 2)
        row_groups = cgutils.for_range_slice(
            builder, source.index(0), count, source.index(LANES)
        )
        with row_groups as (first, _):
            vector = ir.Constant(gathered, None)
            for lane in range(LANES):
                row = builder.add(first, source.index(lane))
                bits = builder.load(source.address(row, byte_at, row_bits), align=1)
                vector = builder.insert_element(vector, bits, ir.Constant(_I32, lane))
            floats = builder.fpext(builder.bitcast(vector, as_halves), wide)
            at = builder.mul(first, source.index(halves))
            if not pairs:
                builder.store(floats, targets[0].address(at, wide), align=4)
            else:
                at = builder.lshr(at, source.index(1))
                for parity, target in enumerate(targets):
                    lanes = ir.Constant(
                        ir.VectorType(_I32, values // 2),
                        list(range(parity, values, 2)),
                    )
                    picked = builder.shuffle_vector(floats, floats, lanes)
                    builder.store(picked, target.address(at, narrow), align=4)
        return context.get_dummy_value()

    return sig, codegen


def band_to_f32(
    src: Any, rows: int, byte: int, even: Any, odd: Any, width: int, paired: bool
) -> None:  # pragma: no cover - replaced by the overload inside @njit code
    """`_band_to_f32`: a block's spread key metadata of `width` halves per
    row (1, 2 or 4, unpaired at 1), which `halves_to_f32` would convert one
    half at a time (njit only)."""
    raise NotImplementedError("band_to_f32 is only callable from @njit code")


@overload(band_to_f32, inline="always")
def _band_to_f32_impl(
    src: Any, rows: Any, byte: Any, even: Any, odd: Any, width: Any, paired: Any
):  # fmt: skip
    def convert(
        src: Any, rows: Any, byte: Any, even: Any, odd: Any, width: Any, paired: Any
    ):  # fmt: skip
        count = np.intp(rows)
        if width == 1:
            _band_to_f32(src, count, byte, even, odd, 1, False)  # pyright: ignore[reportCallIssue]
        elif width == 2:
            if paired:
                _band_to_f32(src, count, byte, even, odd, 2, True)  # pyright: ignore[reportCallIssue]
            else:
                _band_to_f32(src, count, byte, even, odd, 2, False)  # pyright: ignore[reportCallIssue]
        elif paired:
            _band_to_f32(src, count, byte, even, odd, 4, True)  # pyright: ignore[reportCallIssue]
        else:
            _band_to_f32(src, count, byte, even, odd, 4, False)  # pyright: ignore[reportCallIssue]

    return convert


@intrinsic
def _rows_to_f32(
    typingctx: Any,
    src: Any,
    rows: Any,
    byte: Any,
    even: Any,
    odd: Any,
    first: Any,
    width: Any,
    paired: Any,
) -> Any:
    """For each row ``t`` of the range `rows` (a ``(start, stop)`` tuple) of
    `src` (uint8), the `width` IEEE halves (a literal 8 or 16) at byte
    `byte`, as float32: into ``even[first + (t - start) * width:]``
    (`paired` a literal False), or the even ones into `even` and the odd
    ones into `odd` from ``first + (t - start) * width // 2`` on (True:
    (scale, offset) pairs).  One vector load per row and no inner loop."""
    if _storage(src) != "u8":
        raise TypingError(f"src must be a C-contiguous 2D uint8 array, got {src}")
    for name, array in (("even", even), ("odd", odd)):
        if not _float_1d(array, contiguous=True):
            raise TypingError(f"{name} must be a contiguous 1D float32 array")
    if not isinstance(width, types.IntegerLiteral) or width.literal_value not in (
        8,
        16,
    ):
        raise TypingError(f"width must be a literal 8 or 16, got {width}")
    if not isinstance(paired, types.BooleanLiteral):
        raise TypingError(f"paired must be a literal bool, got {paired}")
    if not (isinstance(rows, types.UniTuple) and rows.count == 2):
        raise TypingError(f"rows must be a (start, stop) pair, got {rows}")
    halves = width.literal_value
    pairs = paired.literal_value
    sig = types.void(src, rows, byte, even, odd, first, width, paired)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arg_types = signature.args
        source = _Rows(context, builder, arg_types[0], args[0])
        targets = [_Elements(context, builder, arg_types[i], args[i]) for i in (3, 4)]
        row_type = arg_types[1].dtype
        start, stop = (
            context.cast(
                builder, builder.extract_value(args[1], k), row_type, types.intp
            )
            for k in (0, 1)
        )
        byte_at = context.cast(builder, args[2], arg_types[2], types.intp)
        first_at = context.cast(builder, args[5], arg_types[5], types.intp)
        bits_type = ir.VectorType(ir.IntType(16), halves)
        wide = ir.VectorType(_F32, halves)
        narrow = ir.VectorType(_F32, halves // 2)
        per_target = halves // 2 if pairs else halves
        source_rows = cgutils.for_range_slice(builder, start, stop, source.index(1))
        with source_rows as (row, _):
            bits = builder.load(source.address(row, byte_at, bits_type), align=1)
            floats = builder.fpext(
                builder.bitcast(bits, ir.VectorType(ir.HalfType(), halves)), wide
            )
            at = builder.add(
                first_at,
                builder.mul(builder.sub(row, start), source.index(per_target)),
            )
            if not pairs:
                builder.store(floats, targets[0].address(at, wide), align=4)
            else:
                for parity, target in enumerate(targets):
                    lanes = ir.Constant(
                        ir.VectorType(_I32, halves // 2),
                        list(range(parity, halves, 2)),
                    )
                    picked = builder.shuffle_vector(floats, floats, lanes)
                    builder.store(picked, target.address(at, narrow), align=4)
        return context.get_dummy_value()

    return sig, codegen


def rows_to_f32(
    src: Any, start: int, stop: int, byte: int, even: Any, odd: Any, first: int,
    width: int, paired: bool,
) -> None:  # pragma: no cover - replaced by the overload inside @njit code  # fmt: skip
    """`_rows_to_f32`: rows of eight or sixteen halves (the key scales of
    small blocks, the value scales of an i4 row), one load per row where
    `halves_to_f32` runs a loop of one or two vectors and its remainder
    loop per row (njit only)."""
    raise NotImplementedError("rows_to_f32 is only callable from @njit code")


@overload(rows_to_f32, inline="always")
def _rows_to_f32_impl(
    src: Any, start: Any, stop: Any, byte: Any, even: Any, odd: Any, first: Any,
    width: Any, paired: Any,
):  # fmt: skip
    def convert(
        src: Any, start: Any, stop: Any, byte: Any, even: Any, odd: Any,
        first: Any, width: Any, paired: Any,
    ):  # fmt: skip
        rows = (np.intp(start), np.intp(stop))
        if width == 8:
            if paired:
                _rows_to_f32(src, rows, byte, even, odd, first, 8, True)  # pyright: ignore[reportCallIssue]
            else:
                _rows_to_f32(src, rows, byte, even, odd, first, 8, False)  # pyright: ignore[reportCallIssue]
        elif paired:
            _rows_to_f32(src, rows, byte, even, odd, first, 16, True)  # pyright: ignore[reportCallIssue]
        else:
            _rows_to_f32(src, rows, byte, even, odd, first, 16, False)  # pyright: ignore[reportCallIssue]

    return convert


@intrinsic
def scale_query_rows(
    typingctx: Any,
    q_rows: Any,
    r: Any,
    rows: Any,
    scales: Any,
    offsets: Any,
    q_scaled: Any,
    biases: Any,
) -> Any:
    """For i < `rows`: ``q_scaled[i] = q_rows[r + i] * scales`` and
    ``biases[i] = q_rows[r + i] . offsets``, eight channels per vector (the
    head dimension a multiple of eight; njit only).  A quantized block's
    keys decode as ``code * scale + offset`` per channel, so its logits are
    ``q_scaled . code + bias``: this runs once per block and query row (in
    place of a Numba loop, a hot i8 decode at block 16 took 2-3 ns less
    per token)."""
    for name, array in (("q_rows", q_rows), ("q_scaled", q_scaled)):
        if _storage(array) != "f32":
            raise TypingError(f"{name} must be a C-contiguous 2D float32 array")
    for name, array in (("scales", scales), ("offsets", offsets), ("biases", biases)):
        if not _float_1d(array, contiguous=True):
            raise TypingError(f"{name} must be a contiguous 1D float32 array")
    sig = types.void(q_rows, r, rows, scales, offsets, q_scaled, biases)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arg_types = signature.args
        query = _Rows(context, builder, arg_types[0], args[0])
        scaled = _Rows(context, builder, arg_types[5], args[5])
        scale, offset, bias = (
            _Elements(context, builder, arg_types[i], args[i]) for i in (3, 4, 6)
        )
        first, count = (
            context.cast(builder, args[i], arg_types[i], types.intp) for i in (1, 2)
        )
        # Two accumulators, so consecutive multiply-adds do not wait on
        # each other.
        sums = _vector_slots(builder, 2)

        def scale_eight(i: Any, row: Any, at: Any, slot: Any) -> None:
            q = _load_vector(builder, query, row, at, "f32")
            factor = builder.load(scale.address(at, _VEC), align=4)
            shift = builder.load(offset.address(at, _VEC), align=4)
            builder.store(builder.fmul(q, factor), scaled.address(i, at, _VEC), align=4)
            _accumulate(builder, slot, q, shift)

        with cgutils.for_range(builder, count) as row_loop:
            i = row_loop.index
            row = builder.add(first, i)
            for slot in sums:
                builder.store(ir.Constant(_VEC, [0.0] * LANES), slot)
            pairs = builder.and_(query.columns, query.index(-2 * LANES))
            step = query.index(2 * LANES)
            with cgutils.for_range_slice(builder, query.index(0), pairs, step) as (
                c,
                _,
            ):
                for k, slot in enumerate(sums):
                    scale_eight(i, row, builder.add(c, query.index(k * LANES)), slot)
            # A last vector of eight where the head dimension is an odd
            # multiple of it.
            with builder.if_then(builder.icmp_signed("<", pairs, query.columns)):
                scale_eight(i, row, pairs, sums[0])
            total = builder.fadd(builder.load(sums[0]), builder.load(sums[1]))
            builder.store(_reduce_lanes(builder, total, "fadd"), bias.address(i, _F32))
        return context.get_dummy_value()

    return sig, codegen


def halves_to_f32(
    src: Any, start: int, stop: int, byte: int, stride: int, out: Any, first: int,
    spacing: int, count: int,
) -> None:  # pragma: no cover - replaced by the overload inside @njit code  # fmt: skip
    """For each row t in ``start:stop`` of the uint8 array `src`: ``out[first
    + (t - start) * spacing + c]`` = the IEEE half at byte ``byte + 2 *
    stride * c`` of row t, for c < `count`; `stride` 1 (consecutive halves)
    or 2 (every other: the scales, or the minimums, of (scale, minimum)
    pairs) (njit only)."""
    raise NotImplementedError("halves_to_f32 is only callable from @njit code")


@overload(halves_to_f32, inline="always")
def _halves_to_f32_impl(
    src: Any, start: Any, stop: Any, byte: Any, stride: Any, out: Any, first: Any,
    spacing: Any, count: Any,
):  # fmt: skip
    def convert(
        src: Any, start: Any, stop: Any, byte: Any, stride: Any, out: Any,
        first: Any, spacing: Any, count: Any,
    ):  # fmt: skip
        rows = (np.intp(start), np.intp(stop))
        if stride == 1:
            _halves_to_f32(src, rows, byte, 1, out, first, spacing, count)  # pyright: ignore[reportCallIssue]
        else:
            _halves_to_f32(src, rows, byte, 2, out, first, spacing, count)  # pyright: ignore[reportCallIssue]

    return convert


def _whole_vectors_end(builder: Any, start: Any, stop: Any) -> Any:
    """Where the whole vectors of eight from `start` end, up to `stop`."""
    span = builder.and_(builder.sub(stop, start), ir.Constant(start.type, -LANES))
    return builder.add(start, span)


def _vector_end(builder: Any, start: Any, stop: Any, arrays: list[_Elements]) -> Any:
    """Where the vector part of ``start:stop`` ends: eight lanes at a time
    when every array is contiguous, else nowhere (all scalar)."""
    whole = _whole_vectors_end(builder, start, stop)
    contiguous = arrays[0].contiguous()
    for array in arrays[1:]:
        contiguous = builder.and_(contiguous, array.contiguous())
    return builder.select(contiguous, whole, start)


def _float_3d(array: Any) -> bool:
    return (
        isinstance(array, types.Array)
        and array.ndim == 3
        and array.dtype == types.float32
        and array.layout == "C"
    )


def _token_operands(
    context: Any, builder: Any, signature: Any, args: Any
) -> tuple[Any, Any, Any, Any]:
    """`first`, `n` and `head` of a ``(src, first, n, head, ...)``
    intrinsic as intp, and a function giving token t's row of `src`."""
    first, n, head = (
        context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2, 3)
    )

    def row(t: Any) -> _Elements:
        token = builder.add(first, t)
        return _Elements.token_row(
            context, builder, signature.args[0], args[0], token, head
        )

    return first, n, head, row


@intrinsic
def _token_ranges(
    typingctx: Any, src: Any, first: Any, n: Any, head: Any, low: Any, high: Any
) -> Any:
    """See `token_ranges`."""
    if not _float_3d(src) or not all(_float_1d(a, True) for a in (low, high)):
        raise TypingError("src must be 3D float32, low and high 1D, all contiguous")
    sig = types.void(src, first, n, head, low, high)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        _first, count, _head, row = _token_operands(context, builder, signature, args)
        low_at, high_at = (
            _Elements(context, builder, signature.args[k], args[k]) for k in (4, 5)
        )
        seed = row(ir.Constant(count.type, 0))
        size = seed.size  # D, from `src` (`low` and `high` at least as long)
        zero = ir.Constant(size.type, 0)
        lanes, one = ir.Constant(size.type, LANES), ir.Constant(size.type, 1)
        whole = _whole_vectors_end(builder, zero, size)

        def channels(update: Any) -> None:
            with cgutils.for_range_slice(builder, zero, whole, lanes) as (c, _):
                update(c, _VEC)
            with cgutils.for_range_slice(builder, whole, size, one) as (c, _):
                update(c, _F32)

        def start(index: Any, pointee: Any) -> None:
            value = builder.load(seed.address(index, pointee), align=4)
            builder.store(value, low_at.address(index, pointee), align=4)
            builder.store(value, high_at.address(index, pointee), align=4)

        channels(start)
        with cgutils.for_range_slice(builder, one, count, one) as (t, _):
            x = row(t)

            def widen(index: Any, pointee: Any) -> None:
                value = builder.load(x.address(index, pointee), align=4)
                for out, kind in ((low_at, "min"), (high_at, "max")):
                    at = out.address(index, pointee)
                    held = builder.load(at, align=4)
                    builder.store(_combine(builder, kind, held, value), at, align=4)

            channels(widen)
        return context.get_dummy_value()

    return sig, codegen


def _span_ir(builder: Any, elements: _Elements, first: Any, last: Any) -> Any:
    """``(min, max)`` of ``elements[first:last]`` (non-empty) as two floats."""
    whole = _vector_end(builder, first, last, [elements])

    def fold(slots: list[Any], value: Any) -> None:
        for slot, kind in zip(slots, ("min", "max"), strict=True):
            builder.store(_combine(builder, kind, builder.load(slot), value), slot)

    seed = _splat(builder, builder.load(elements.address(first, _F32)))
    vectors = [cgutils.alloca_once_value(builder, seed) for _ in range(2)]
    lanes = ir.Constant(first.type, LANES)
    with cgutils.for_range_slice(builder, first, whole, lanes) as (c, _):
        fold(vectors, builder.load(elements.address(c, _VEC), align=4))
    # The lanes' extremes (a tree: a chain of seven measured slower), then
    # the scalar rest.
    ends = [
        cgutils.alloca_once_value(
            builder, _reduce_lanes(builder, builder.load(slot), kind)
        )
        for slot, kind in zip(vectors, ("min", "max"), strict=True)
    ]
    one = ir.Constant(first.type, 1)
    with cgutils.for_range_slice(builder, whole, last, one) as (c, _):
        fold(ends, builder.load(elements.address(c, _F32), align=4))
    return [builder.load(slot) for slot in ends]


@intrinsic
def _token_group_ranges(
    typingctx: Any, src: Any, first: Any, n: Any, head: Any, group: Any, lows: Any,
    highs: Any,
) -> Any:  # fmt: skip
    """See `token_group_ranges`."""
    if not _float_3d(src) or not all(_float_1d(a, True) for a in (lows, highs)):
        raise TypingError("src must be 3D float32, lows and highs 1D, all contiguous")
    sig = types.void(src, first, n, head, group, lows, highs)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        _first, count, _head, row = _token_operands(context, builder, signature, args)
        all_lows, all_highs = (
            _Elements(context, builder, signature.args[k], args[k]) for k in (5, 6)
        )
        width = context.cast(builder, args[4], signature.args[4], types.intp)
        with cgutils.for_range(builder, count) as tokens:
            x = row(tokens.index)
            groups = builder.sdiv(x.size, width)
            at = builder.mul(tokens.index, groups)
            lows_at, highs_at = all_lows.shifted(at), all_highs.shifted(at)
            _row_group_ranges(builder, x, width, groups, lows_at, highs_at)
        return context.get_dummy_value()

    return sig, codegen


def _row_group_ranges(
    builder: Any, x: _Elements, width: Any, groups: Any, lows_at: _Elements,
    highs_at: _Elements,
) -> None:  # fmt: skip
    """``lows_at[g], highs_at[g]`` = the extremes of group g of the row
    `x`, for its `groups` whole groups of `width`."""
    zero, one = ir.Constant(width.type, 0), ir.Constant(width.type, 1)
    sixteens = builder.and_(
        builder.icmp_signed("==", width, ir.Constant(width.type, CHANNELS)),
        x.contiguous(),
    )
    outputs = ((lows_at, "min"), (highs_at, "max"))

    def halves_of_sixteen(g: Any) -> tuple[Any, Any]:
        at = builder.mul(g, ir.Constant(g.type, CHANNELS))
        second = builder.add(at, ir.Constant(g.type, LANES))
        return tuple(  # pyright: ignore[reportReturnType]
            builder.load(x.address(k, _VEC), align=4) for k in (at, second)
        )

    with builder.if_else(sixteens) as (sixteen, other):
        with sixteen:
            # Eight groups of 16 at a time: each group's two vectors
            # folded lane-wise, then the eight folded across lanes at
            # once (i4 values: about half the time of one span per group).
            eights = builder.and_(groups, ir.Constant(width.type, -LANES))
            step = ir.Constant(width.type, LANES)
            with cgutils.for_range_slice(builder, zero, eights, step) as (g, _):
                pairs = [
                    halves_of_sixteen(builder.add(g, ir.Constant(g.type, k)))
                    for k in range(LANES)
                ]
                for out, kind in outputs:
                    lanes = [_combine(builder, kind, a, b) for a, b in pairs]
                    folded = _fold_eight(builder, lanes, kind)
                    builder.store(folded, out.address(g, _VEC), align=4)
            with cgutils.for_range_slice(builder, eights, groups, one) as (g, _):
                a, b = halves_of_sixteen(g)
                for out, kind in outputs:
                    lane = _combine(builder, kind, a, b)
                    value = _reduce_lanes(builder, lane, kind)
                    builder.store(value, out.address(g, _F32), align=4)
        with other, cgutils.for_range_slice(builder, zero, groups, one) as (g, _):
            first = builder.mul(g, width)
            ends = _span_ir(builder, x, first, builder.add(first, width))
            for (out, _kind), value in zip(outputs, ends, strict=True):
                builder.store(value, out.address(g, _F32), align=4)


def token_ranges(
    src: Any, first: int, n: int, head: int, low: Any, high: Any
) -> None:  # pragma: no cover
    """``low``, ``high`` = the element-wise ``(min, max)`` of the rows
    ``src[first + t, head]`` for t < `n` (n >= 1): the per-channel range of
    a run of keys, eight lanes per instruction (njit only; finite values:
    LLVM's loop vectorizer leaves Numba's min/max loops scalar)."""
    raise NotImplementedError("token_ranges is only callable from @njit code")


def token_group_ranges(
    src: Any, first: int, n: int, head: int, group: int, lows: Any, highs: Any
) -> None:  # pragma: no cover
    """``lows[t * G + g]``, ``highs[t * G + g]`` = ``(min, max)`` of group g
    (channels ``g * group`` .. ``(g + 1) * group``) of the row ``src[first
    + t, head]``, for t < `n` and each of its ``G = D // group`` groups;
    groups of 16 eight at a time (njit only; finite values)."""
    raise NotImplementedError("token_group_ranges is only callable from @njit code")


@overload(token_ranges, inline="always")
def _token_ranges_impl(
    src: Any, first: Any, n: Any, head: Any, low: Any, high: Any
):  # fmt: skip
    def ranges(src: Any, first: Any, n: Any, head: Any, low: Any, high: Any):
        _token_ranges(src, first, n, head, low, high)  # pyright: ignore[reportCallIssue]

    return ranges


@overload(token_group_ranges, inline="always")
def _token_group_ranges_impl(
    src: Any, first: Any, n: Any, head: Any, group: Any, lows: Any, highs: Any
):  # fmt: skip
    def ranges(
        src: Any, first: Any, n: Any, head: Any, group: Any, lows: Any, highs: Any
    ):  # fmt: skip
        _token_group_ranges(src, first, n, head, group, lows, highs)  # pyright: ignore[reportCallIssue]

    return ranges


# exp on float32 without a libm call: exp(x) = 2**n * exp(r) with
# n = round(x / ln 2) and r = x - n ln 2 (ln 2 split in two parts, Cody-Waite,
# so r keeps full precision), |r| <= ln(2)/2, exp(r) by its degree-7 Taylor
# polynomial (truncation error 5e-9): a few float32 ulps overall.
# Straight-line code the CPU overlaps across tokens; it measured faster here
# than both libm's expf and the float64 exp.  `exp_nonpositive` is the
# scalar form, `_exp_ir` the same steps in LLVM IR (scalar or vector).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)  # 16 significant bits: n * hi is exact
_LN2_LO = np.float32(1.4286068202862268e-06)  # ln 2 - _LN2_HI
_EXP_COEFFS = tuple(np.float32(1.0 / math.factorial(k)) for k in range(7, -1, -1))
_EXP_FLOOR = np.float32(-87.0)  # exp(-87) ~ 1.6e-38, still a normal float32


@intrinsic
def _f32_from_bits(typingctx: Any, bits: Any) -> Any:
    sig = types.float32(types.int32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], _F32)

    return sig, codegen


@njit(inline="always", fastmath={"reassoc", "contract"}, cache=True)
def exp_nonpositive(x: Any) -> Any:
    """exp(x) for float32 x <= 0; inputs below -87 give exp(-87), which is
    negligible next to the running sum (>= 1) it is added to."""
    x = max(x, _EXP_FLOOR)
    n = np.floor(x * _LOG2E + np.float32(0.5))
    r = (x - n * _LN2_HI) - n * _LN2_LO
    c = _EXP_COEFFS
    p = c[0]
    p = p * r + c[1]
    p = p * r + c[2]
    p = p * r + c[3]
    p = p * r + c[4]
    p = p * r + c[5]
    p = p * r + c[6]
    p = p * r + c[7]
    return p * _f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))  # pyright: ignore[reportCallIssue]


def _float_constant(like: Any, value: float | np.float32) -> Any:
    """`value` as a float, or splatted over a vector, of `like`'s type."""
    if like.type == _VEC:
        return ir.Constant(_VEC, [float(value)] * LANES)
    return ir.Constant(_F32, float(value))


def _exp_ir(builder: Any, x: Any) -> Any:
    """`exp_nonpositive` of a float or of each lane of a float vector."""

    def const(value: float | np.float32) -> Any:
        return _float_constant(x, value)

    x = _float_call(builder, "maxnum", x, const(_EXP_FLOOR))
    n = _float_call(
        builder, "floor", _float_call(builder, "fmuladd", x, const(_LOG2E), const(0.5))
    )
    r = builder.fsub(
        builder.fsub(x, builder.fmul(n, const(_LN2_HI))),
        builder.fmul(n, const(_LN2_LO)),
    )
    p = const(_EXP_COEFFS[0])
    for coefficient in _EXP_COEFFS[1:]:
        p = _float_call(builder, "fmuladd", p, r, const(coefficient))
    words = _WORDS if x.type == _VEC else _I32
    exponent = builder.fptosi(n, words)
    bias = ir.Constant(words, [127] * LANES) if x.type == _VEC else _I32(127)
    shift = ir.Constant(words, [23] * LANES) if x.type == _VEC else _I32(23)
    power = builder.bitcast(builder.shl(builder.add(exponent, bias), shift), x.type)
    return builder.fmul(p, power)


# tanh on float32 for the soft cap, t = tanh(|y|) with its sign put back:
# below _TANH_SERIES_END the odd Taylor series to y^9 (the first term left
# out is below 1e-8 of t there), above it (1 - e) / (1 + e) with e =
# exp(-2|y|) by `_exp_ir`, whose few ulps of error no longer meet a
# cancellation (1 - e >= 0.39).  libm's tanhf, one call per score, made a
# soft-capped prefill about 2.2x slower than an uncapped one (2048 tokens).
_TANH_SERIES_END = np.float32(0.25)
_TANH_SERIES = tuple(np.float32(c) for c in (62 / 2835, -17 / 315, 2 / 15, -1 / 3, 1.0))


def _tanh_ir(builder: Any, y: Any) -> Any:
    """tanh of a float or of each lane of a float vector (finite: a NaN
    would come out as +-1, `_exp_ir`'s floor dropping it; scores are
    finite, the caches refusing inf and NaN)."""

    def const(value: float | np.float32) -> Any:
        return _float_constant(y, value)

    magnitude = _float_call(builder, "fabs", y)
    e = _exp_ir(builder, builder.fmul(magnitude, const(-2.0)))
    far = builder.fdiv(builder.fsub(const(1.0), e), builder.fadd(const(1.0), e))
    square = builder.fmul(magnitude, magnitude)
    series = const(_TANH_SERIES[0])
    for coefficient in _TANH_SERIES[1:]:
        series = _float_call(builder, "fmuladd", series, square, const(coefficient))
    near = builder.fmul(series, magnitude)
    small = builder.fcmp_ordered("<", magnitude, const(_TANH_SERIES_END))
    return _float_call(builder, "copysign", builder.select(small, near, far), y)


def _cap_rows_intrinsic(rows: int) -> Any:
    """``scores[i, t] = cap * tanh(scores[i, t] / cap)`` for each i <
    `rows` and t in ``lo:hi``."""

    @intrinsic
    def cap_rows(typingctx: Any, scores: Any, lo: Any, hi: Any, cap: Any) -> Any:
        if _storage(scores) != "f32":
            raise TypingError(f"scores must be float32, got {scores}")
        sig = types.void(scores, lo, hi, cap)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            s, lo, hi, whole = _rows_intrinsic_prologue(
                context, builder, signature, args
            )
            cap = context.cast(builder, args[3], signature.args[3], types.float32)

            def step(address: Any, limit: Any) -> None:
                y = builder.fdiv(builder.load(address, align=4), limit)
                builder.store(
                    builder.fmul(limit, _tanh_ir(builder, y)), address, align=4
                )

            with cgutils.for_range_slice(builder, lo, whole, s.index(LANES)) as (t, _):
                for i in range(rows):
                    step(s.address(s.index(i), t, _VEC), _splat(builder, cap))
            with cgutils.for_range_slice(builder, whole, hi, s.index(1)) as (t, _):
                for i in range(rows):
                    step(s.address(s.index(i), t), cap)
            return context.get_dummy_value()

        return sig, codegen

    return cap_rows


def _reduce_lanes(builder: Any, vector: Any, kind: str) -> Any:
    """The lanes of `vector` folded into one float by `kind` (a `_combine`
    kind; a tree: halves, quarters, pairs)."""
    width = LANES
    while width > 1:
        width //= 2
        upper = builder.shuffle_vector(
            vector,
            ir.Constant(_VEC, None),
            ir.Constant(
                _LANE_INDICES, list(range(width, 2 * width)) + [0] * (LANES - width)
            ),
        )
        vector = _combine(builder, kind, vector, upper)
    return builder.extract_element(vector, ir.Constant(_I32, 0))


def _rows_intrinsic_prologue(
    context: Any, builder: Any, signature: Any, args: Any
) -> tuple[_Rows, Any, Any, Any]:
    """The rows of a ``(scores, lo, hi, ...)`` intrinsic, its bounds as
    intp, and where the vector part of ``lo:hi`` ends."""
    scores = _Rows(context, builder, signature.args[0], args[0])
    lo, hi = (
        context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2)
    )
    return scores, lo, hi, _whole_vectors_end(builder, lo, hi)


def _row_maxima_intrinsic(rows: int) -> Any:
    """``max(scores[i, lo:hi])`` for each i < `rows`, as a tuple."""
    result = types.UniTuple(types.float32, rows)

    @intrinsic
    def maxima(typingctx: Any, scores: Any, lo: Any, hi: Any) -> Any:
        if _storage(scores) != "f32":
            raise TypingError(f"scores must be float32, got {scores}")
        sig = result(scores, lo, hi)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            s, lo, hi, whole = _rows_intrinsic_prologue(
                context, builder, signature, args
            )
            largest = [
                cgutils.alloca_once_value(
                    builder, ir.Constant(_VEC, [-math.inf] * LANES)
                )
                for _ in range(rows)
            ]

            def fold(slot: Any, value: Any) -> None:
                builder.store(
                    _float_call(builder, "maxnum", builder.load(slot), value), slot
                )

            with cgutils.for_range_slice(builder, lo, whole, s.index(LANES)) as (t, _):
                for i, slot in enumerate(largest):
                    fold(slot, builder.load(s.address(s.index(i), t, _VEC), align=4))
            ends = [
                cgutils.alloca_once_value(
                    builder,
                    _reduce_lanes(builder, builder.load(slot), "maxnum"),
                )
                for slot in largest
            ]
            with cgutils.for_range_slice(builder, whole, hi, s.index(1)) as (t, _):
                for i, slot in enumerate(ends):
                    fold(slot, builder.load(s.address(s.index(i), t), align=4))
            values = [builder.load(slot) for slot in ends]
            return context.make_tuple(builder, result, values)

        return sig, codegen

    return maxima


def _row_exponentials_intrinsic(rows: int) -> Any:
    """``scores[i, t] = exp(scores[i, t] - shifts[i])`` for each i < `rows`
    and t in ``lo:hi``; returns each row's sum, as a tuple.  The rows go
    side by side, so their exponentials' long dependency chains overlap."""
    result = types.UniTuple(types.float32, rows)

    @intrinsic
    def exponentials(typingctx: Any, scores: Any, lo: Any, hi: Any, shifts: Any) -> Any:
        if _storage(scores) != "f32":
            raise TypingError(f"scores must be float32, got {scores}")
        if shifts != result:
            raise TypingError(f"shifts must be {result}, got {shifts}")
        sig = result(scores, lo, hi, shifts)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            s, lo, hi, whole = _rows_intrinsic_prologue(
                context, builder, signature, args
            )
            shifts = [builder.extract_value(args[3], i) for i in range(rows)]
            splats = [_splat(builder, shift) for shift in shifts]
            totals = [
                cgutils.alloca_once_value(builder, ir.Constant(_VEC, [0.0] * LANES))
                for _ in range(rows)
            ]

            def step(slot: Any, address: Any, shift: Any) -> None:
                x = builder.fsub(builder.load(address, align=4), shift)
                p = _exp_ir(builder, x)
                builder.store(p, address, align=4)
                builder.store(builder.fadd(builder.load(slot), p), slot)

            with cgutils.for_range_slice(builder, lo, whole, s.index(LANES)) as (t, _):
                for i, slot in enumerate(totals):
                    step(slot, s.address(s.index(i), t, _VEC), splats[i])
            sums = [
                cgutils.alloca_once_value(
                    builder, _reduce_lanes(builder, builder.load(slot), "fadd")
                )
                for slot in totals
            ]
            with cgutils.for_range_slice(builder, whole, hi, s.index(1)) as (t, _):
                for i, slot in enumerate(sums):
                    step(slot, s.address(s.index(i), t), shifts[i])
            values = [builder.load(slot) for slot in sums]
            return context.make_tuple(builder, result, values)

        return sig, codegen

    return exponentials


row_maxima = _row_maxima_intrinsic(ROWS)
"""``(max(scores[i, lo:hi]) for i < 4)`` (``lo:hi`` non-empty; njit
only)."""

row_maximum = _row_maxima_intrinsic(1)
"""``(max(scores[0, lo:hi]),)`` (njit only)."""

row_exponentials = _row_exponentials_intrinsic(ROWS)
"""``scores[i, t] = exp_nonpositive(scores[i, t] - shifts[i])`` for i < 4
and t in ``lo:hi``, returning the four rows' sums (njit only; each shift
at least every score of its row)."""

row_exponential = _row_exponentials_intrinsic(1)
"""`row_exponentials` of row 0 alone (njit only)."""

cap_rows = _cap_rows_intrinsic(ROWS)
"""The soft cap ``cap * tanh(s / cap)`` of ``scores[i, lo:hi]`` for i < 4,
eight lanes at a time (a float32 tanh within a few ulps; njit only)."""

cap_row = _cap_rows_intrinsic(1)
"""`cap_rows` of row 0 alone (njit only)."""


def _formats(dtype: Any) -> tuple[str, str, int]:
    """The two formats a storage dtype may hold and the element code that
    picks the first (float32 holds one)."""
    if dtype == types.uint16:
        return "f16", "bf16", F16_CODE
    if dtype == types.uint8:
        return "i8", "i4", I8_CODE
    return "f32", "f32", -1


def _pv_overload(tile: Any) -> Any:
    def implementation(
        weights: Any, values: Any, lo: Any, hi: Any, acc: Any, r: Any, base: Any,
        value_meta: Any, ahead: Any, kind_code: Any,
    ) -> Any:  # fmt: skip
        # By the stored dtype at compile time; the kind test is on a
        # constant of each kernel, so LLVM keeps one branch.
        first, second, first_code = _formats(values.dtype)

        def dispatch(
            weights: Any, values: Any, lo: Any, hi: Any, acc: Any, r: Any,
            base: Any, value_meta: Any, ahead: Any, kind_code: Any,
        ):  # fmt: skip
            if kind_code == first_code:
                tile(weights, values, lo, hi, acc, r, base, value_meta, ahead, first)
            else:
                tile(weights, values, lo, hi, acc, r, base, value_meta, ahead, second)

        return dispatch

    return implementation


def qk_tile(
    q_rows: Any, r: int, keys: Any, t: int, scores: Any, ahead: int, kind_code: int
) -> None:  # pragma: no cover - replaced by the overload inside @njit code
    """``scores[i, t + j] = q_rows[r + i] . keys[t + j]`` for i < 4, j < 2,
    `keys` holding elements of `kind_code` (njit only).  Quantized keys are
    a block's rows of codes (their offset left to the caller).  Float keys
    prefetch, as they are read, the lines `ahead` bytes further (0: none;
    quantized keys prefetch nothing)."""
    raise NotImplementedError("qk_tile is only callable from @njit code")


def qk_row(
    q_rows: Any, r: int, keys: Any, t: int, scores: Any, ahead: int, kind_code: int
) -> None:  # pragma: no cover - replaced by the overload inside @njit code
    """``scores[0, t + j] = q_rows[r] . keys[t + j]`` for j < 8, as
    `qk_tile`, but prefetching nothing: `ahead` is unused, there for
    `qk_tile`'s signature (njit only)."""
    raise NotImplementedError("qk_row is only callable from @njit code")


def pv_tile(
    weights: Any, values: Any, lo: int, hi: int, acc: Any, r: int, base: int,
    value_meta: Any, ahead: int, kind_code: int,
) -> None:  # pragma: no cover - replaced by the overload inside @njit code  # fmt: skip
    """``acc[r + i] += weights[i, lo:hi] @ values[lo:hi]`` for i < 4,
    `values` holding elements of `kind_code` from column `base` on; the head
    dimension a multiple of `CHANNELS` (njit only).  Float values prefetch,
    as they are read, the lines `ahead` bytes further (0: none).

    Quantized values are codes, decoded in registers once for all rows as
    ``code * scale + offset`` of their token and value group (i8: one group,
    the whole row): `value_meta` (1D float32) holds token t's (scale,
    offset) pairs, group by group, from ``t * 2 * groups`` on; float values
    ignore it."""
    raise NotImplementedError("pv_tile is only callable from @njit code")


def pv_row(
    weights: Any, values: Any, lo: int, hi: int, acc: Any, r: int, base: int,
    value_meta: Any, ahead: int, kind_code: int,
) -> None:  # pragma: no cover - replaced by the overload inside @njit code  # fmt: skip
    """`pv_tile` for the single row `r`, 32 channels per chunk, but
    prefetching nothing (`ahead` unused): the head dimension a multiple of
    32 (njit only)."""
    raise NotImplementedError("pv_row is only callable from @njit code")


def prefetch_ir(builder: Any, address: Any) -> None:
    """Hint the CPU to load the line holding byte pointer `address` into L2
    (``llvm.prefetch``, read, locality 2: ``prefetcht1``)."""
    fnty = ir.FunctionType(ir.VoidType(), [_I8_PTR, _I32, _I32, _I32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    builder.call(fn, [address, _I32(0), _I32(2), _I32(1)])


def _prefetch_ahead(
    builder: Any, rows: _Rows, row: Any, column: Any, ahead: Any
) -> None:
    """Prefetch the line `ahead` bytes past element ``[row, column]`` of
    `rows` (`prefetch_ir`)."""
    prefetch_ir(builder, builder.gep(rows.address(row, column, ir.IntType(8)), [ahead]))


def _line_vectors(stored: str) -> int:
    """Vectors of eight stored elements in one 64-byte cache line."""
    return {"f32": 2, "f16": 4, "bf16": 4}[stored]


@intrinsic
def _qk_row_stream(
    typingctx: Any, q_rows: Any, r: Any, keys: Any, t: Any, scores: Any,
    ahead: Any, element: Any,
) -> Any:  # fmt: skip
    """``scores[0, t + j] = q_rows[r] . keys[t + j]`` for j < 8, the keys
    read one whole row after the other (one sequential stream), each line
    read prefetching the line `ahead` bytes further (0: itself)."""
    stored = _element_format(element, _storage(keys))
    if stored not in ("f32", "f16", "bf16"):
        raise TypingError(f"float keys expected, got {stored}")
    sig = types.void(q_rows, r, keys, t, scores, ahead, element)
    per_line = _line_vectors(stored)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        q, k, s, q_row, token = _score_operands(context, builder, signature, args)
        ahead_bytes = context.cast(builder, args[5], signature.args[5], types.intp)
        sums = []
        for j in range(LANES):
            row = builder.add(token, k.index(j))
            # Two accumulators: half the length of one dependency chain.
            partial = _vector_slots(builder, 2)
            for slot in partial:
                builder.store(ir.Constant(_VEC, [0.0] * LANES), slot)
            loop = cgutils.for_range_slice(
                builder, q.index(0), q.columns, q.index(LANES * per_line)
            )
            with loop as (d, _):
                _prefetch_ahead(builder, k, row, d, ahead_bytes)
                for u in range(per_line):
                    column = builder.add(d, q.index(LANES * u))
                    q_u = _load_vector(builder, q, q_row, column, "f32")
                    k_u = _load_vector(builder, k, row, column, stored)
                    _accumulate(builder, partial[u % 2], q_u, k_u)
            sums.append(
                builder.fadd(builder.load(partial[0]), builder.load(partial[1]))
            )
        folded = _fold_eight(builder, sums)
        builder.store(folded, s.address(s.index(0), token, _VEC), align=4)
        return context.get_dummy_value()

    return sig, codegen


_ROW_STREAM_VECTORS = (16, 8, 4)
"""The chunks `_pv_row_stream` may hold in registers, widest first: 128,
64 or 32 channels."""


def _pv_row_stream_chunks(
    builder: Any, w: _Rows, v: _Rows, out: _Rows, lo: Any, hi: Any, ahead: Any,
    stored: str, vectors: int,
) -> None:  # fmt: skip
    """The chunks of `_pv_row_stream`, `vectors` vectors each."""
    per_line = _line_vectors(stored)
    slots = _vector_slots(builder, vectors)
    chunks = cgutils.for_range_slice(
        builder, out.index(0), out.columns, out.index(LANES * vectors)
    )
    with chunks as (d, _):
        columns = [builder.add(d, out.index(LANES * c)) for c in range(vectors)]
        for slot, column in zip(slots, columns, strict=True):
            builder.store(_load_vector(builder, out, out.index(0), column, "f32"), slot)
        with cgutils.for_range_slice(builder, lo, hi, v.index(1)) as (t, _):
            p = _splat(builder, builder.load(w.address(w.index(0), t)))
            for c, (slot, column) in enumerate(zip(slots, columns, strict=True)):
                if c % per_line == 0:
                    _prefetch_ahead(builder, v, t, column, ahead)
                _accumulate(
                    builder, slot, p, _load_vector(builder, v, t, column, stored)
                )
        for slot, column in zip(slots, columns, strict=True):
            address = out.address(out.index(0), column, _VEC)
            builder.store(builder.load(slot), address, align=4)


@intrinsic
def _pv_row_stream(
    typingctx: Any, weights: Any, values: Any, lo: Any, hi: Any, acc: Any,
    ahead: Any, element: Any,
) -> Any:  # fmt: skip
    """``acc[0] += weights[0, lo:hi] @ values[lo:hi]``, the widest chunk of
    `_ROW_STREAM_VECTORS` that divides the head dimension held in registers
    across the tokens, each line of values read prefetching the line
    `ahead` bytes further (0: itself)."""
    stored = _element_format(element, _storage(values))
    if stored not in ("f32", "f16", "bf16"):
        raise TypingError(f"float values expected, got {stored}")
    sig = types.void(weights, values, lo, hi, acc, ahead, element)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arg_types = signature.args
        w, v, out = (_Rows(context, builder, arg_types[i], args[i]) for i in (0, 1, 4))
        lo_value, hi_value, ahead_bytes = (
            context.cast(builder, args[i], arg_types[i], types.intp) for i in (2, 3, 5)
        )

        def chunks_of(position: int) -> None:
            vectors = _ROW_STREAM_VECTORS[position]

            def emit() -> None:
                _pv_row_stream_chunks(
                    builder, w, v, out, lo_value, hi_value, ahead_bytes, stored,
                    vectors,
                )  # fmt: skip

            if position == len(_ROW_STREAM_VECTORS) - 1:
                emit()
                return
            width = out.index(LANES * vectors)
            divides = builder.icmp_signed(
                "==", builder.srem(out.columns, width), out.index(0)
            )
            with builder.if_else(divides) as (then, otherwise):
                with then:
                    emit()
                with otherwise:
                    chunks_of(position + 1)

        chunks_of(0)
        return context.get_dummy_value()

    return sig, codegen


def qk_row_stream(
    q_rows: Any, r: int, keys: Any, t: int, scores: Any, ahead: int,
    kind_code: int,
) -> None:  # pragma: no cover - replaced by the overload inside @njit code  # fmt: skip
    """`_qk_row_stream` over float32 or half keys, the head dimension a
    multiple of 32 (njit only)."""
    raise NotImplementedError("qk_row_stream is only callable from @njit code")


def pv_row_stream(
    weights: Any, values: Any, lo: int, hi: int, acc: Any, ahead: int,
    kind_code: int,
) -> None:  # pragma: no cover - replaced by the overload inside @njit code  # fmt: skip
    """`_pv_row_stream` over float32 or half values, the head dimension a
    multiple of 32 (njit only)."""
    raise NotImplementedError("pv_row_stream is only callable from @njit code")


def _prefetching_overload(tile: Any, stored_at: int) -> Any:
    """The overload of a tile of five operands (the stored array the one at
    `stored_at`), then the prefetch distance and the kind code: the tile
    of the kind's format, by the stored dtype at compile time (the kind
    test is on a constant of each kernel, so LLVM keeps one branch)."""

    def implementation(
        o0: Any, o1: Any, o2: Any, o3: Any, o4: Any, ahead: Any, kind_code: Any
    ) -> Any:
        first, second, first_code = _formats((o0, o1, o2, o3, o4)[stored_at].dtype)

        def dispatch(
            o0: Any, o1: Any, o2: Any, o3: Any, o4: Any, ahead: Any, kind_code: Any
        ):
            if kind_code == first_code:
                tile(o0, o1, o2, o3, o4, ahead, first)
            else:
                tile(o0, o1, o2, o3, o4, ahead, second)

        return dispatch

    return implementation


overload(qk_tile, inline="always")(_prefetching_overload(_qk_tile, 2))
overload(qk_row, inline="always")(_prefetching_overload(_qk_row, 2))
overload(pv_tile, inline="always")(_pv_overload(_pv_tile))
overload(pv_row, inline="always")(_pv_overload(_pv_row))
overload(qk_row_stream, inline="always")(_prefetching_overload(_qk_row_stream, 2))
overload(pv_row_stream, inline="always")(_prefetching_overload(_pv_row_stream, 1))
