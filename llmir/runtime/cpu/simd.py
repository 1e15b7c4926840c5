"""Vector micro-kernels of GQA attention, written as LLVM IR.

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

(Single-row tiles for MHA decode, one row by eight keys and by 32 channels,
measured slower than the streaming loop of the kernel: a single row is
bound by memory, not arithmetic, and reads best as one sequential stream.)

The stored elements are float32, or IEEE half / bfloat16 bit patterns
(uint16) converted on load: ``fpext`` from ``half`` (``vcvtph2ps`` with
F16C) or a 16-bit shift.  Multiply-adds are ``llvm.fmuladd``: fused where
the CPU has FMA, a multiply and an add elsewhere.  Sums are reordered
relative to a sequential loop, as the kernels' ``reassoc`` flag allows.

Preconditions, checked by the callers: rows of every array are contiguous,
the head dimension is a multiple of `CHANNELS`, and the rows and keys a
tile names exist.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types  # pyright: ignore[reportUnknownVariableType]
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from llmir.runtime.dtypes import F16_CODE

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
    raise TypingError(f"expected float32 or uint16 elements, got {array.dtype}")


def _element_format(element: Any, storage: str) -> str:
    """The stored format: float32 storage is 'f32'; uint16 storage names its
    format, 'f16' or 'bf16', as a string literal."""
    if storage == "f32":
        return "f32"
    if not isinstance(element, types.StringLiteral) or element.literal_value not in (
        "f16",
        "bf16",
    ):
        raise TypingError(f"uint16 storage needs 'f16' or 'bf16', got {element}")
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


def _load_vector(builder: Any, rows: _Rows, row: Any, column: Any, element: str) -> Any:
    """Eight consecutive stored elements from ``[row, column]`` on, as
    ``<8 x float>``."""
    if element == "f32":
        return builder.load(rows.address(row, column, _VEC), align=4)
    bits_type = ir.VectorType(ir.IntType(16), LANES)
    bits = builder.load(rows.address(row, column, bits_type), align=2)
    if element == "f16":
        halves = builder.bitcast(bits, ir.VectorType(ir.HalfType(), LANES))
        return builder.fpext(halves, _VEC)
    wide = builder.zext(bits, ir.VectorType(_I32, LANES))
    return builder.bitcast(
        builder.shl(wide, ir.Constant(wide.type, [16] * LANES)), _VEC
    )


def _splat(builder: Any, scalar: Any) -> Any:
    undefined = ir.Constant(_VEC, None)
    one = builder.insert_element(undefined, scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(
        one, undefined, ir.Constant(_LANE_INDICES, [0] * LANES)
    )


def _fmuladd(builder: Any, a: Any, b: Any, c: Any) -> Any:
    fnty = ir.FunctionType(_VEC, [_VEC, _VEC, _VEC])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fmuladd.v8f32")
    return builder.call(fn, [a, b, c])


def _accumulate(builder: Any, slot: Any, a: Any, b: Any) -> None:
    """``*slot += a * b`` (an alloca that LLVM keeps in a register)."""
    builder.store(_fmuladd(builder, a, b, builder.load(slot)), slot)


def _shuffle_add(
    builder: Any, a: Any, b: Any, first: list[int], second: list[int]
) -> Any:
    return builder.fadd(
        builder.shuffle_vector(a, b, ir.Constant(_LANE_INDICES, first)),
        builder.shuffle_vector(a, b, ir.Constant(_LANE_INDICES, second)),
    )


def _sum_eight(builder: Any, vectors: list[Any]) -> Any:
    """One vector whose lane i is the sum of the lanes of ``vectors[i]``:
    a transposing tree of shuffles and adds."""
    evens, odds = [0, 8, 2, 10, 4, 12, 6, 14], [1, 9, 3, 11, 5, 13, 7, 15]
    pairs = [
        _shuffle_add(builder, vectors[i], vectors[i + 1], evens, odds)
        for i in range(0, 8, 2)
    ]
    # pairs[k] lanes: A01 B01 A23 B23 A45 B45 A67 B67 (A, B: vectors 2k, 2k+1)
    lows, highs = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    quads = [_shuffle_add(builder, pairs[i], pairs[i + 1], lows, highs) for i in (0, 2)]
    # quads[k] lanes: A0-3 B0-3 C0-3 D0-3 A4-7 B4-7 C4-7 D4-7
    halves = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return _shuffle_add(builder, quads[0], quads[1], *halves)


def _vector_slots(builder: Any, count: int) -> list[Any]:
    return [cgutils.alloca_once(builder, _VEC) for _ in range(count)]


_TILE_KEYS = 2
"""Keys of one ``Q K^T`` tile: with `ROWS` rows, eight dot products."""

_TILE_VECTORS = CHANNELS // LANES
"""Vectors per accumulator row of the ``P V`` tile."""


@intrinsic
def _qk_tile(
    typingctx: Any,
    q_rows: Any,
    r: Any,
    keys: Any,
    t: Any,
    scores: Any,
    element: Any,
) -> Any:
    """``scores[i, t + j] = q_rows[r + i] . keys[t + j]`` for i < 4, j < 2,
    in eight vector accumulators over the channels."""
    stored = _element_format(element, _storage(keys))
    if _storage(q_rows) != "f32" or _storage(scores) != "f32":
        raise TypingError("q_rows and scores must be float32")
    sig = types.void(q_rows, r, keys, t, scores, element)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        q_type, r_type, k_type, t_type, s_type, _ = signature.args
        q = _Rows(context, builder, q_type, args[0])
        k = _Rows(context, builder, k_type, args[2])
        s = _Rows(context, builder, s_type, args[4])
        row = context.cast(builder, args[1], r_type, types.intp)
        token = context.cast(builder, args[3], t_type, types.intp)
        slots = [builder.add(token, k.index(j)) for j in range(_TILE_KEYS)]
        # accumulators[_TILE_KEYS * i + j]: row i, key j
        accumulators = _vector_slots(builder, ROWS * _TILE_KEYS)
        for slot in accumulators:
            builder.store(ir.Constant(_VEC, [0.0] * LANES), slot)
        loop = cgutils.for_range_slice(builder, k.index(0), k.columns, k.index(LANES))
        with loop as (d, _):
            key_vectors = [_load_vector(builder, k, tk, d, stored) for tk in slots]
            for i in range(ROWS):
                q_i = _load_vector(builder, q, builder.add(row, q.index(i)), d, "f32")
                for j, k_j in enumerate(key_vectors):
                    _accumulate(builder, accumulators[_TILE_KEYS * i + j], q_i, k_j)
        sums = _sum_eight(builder, [builder.load(slot) for slot in accumulators])
        for i in range(ROWS):
            for j, tk in enumerate(slots):
                lane = ir.Constant(_I32, _TILE_KEYS * i + j)
                address = s.address(s.index(i), tk)
                builder.store(builder.extract_element(sums, lane), address)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _pv_tile(
    typingctx: Any,
    weights: Any,
    values: Any,
    lo: Any,
    hi: Any,
    acc: Any,
    r: Any,
    element: Any,
) -> Any:
    """``acc[r + i] += weights[i, lo:hi] @ values[lo:hi]`` for i < 4, with
    `CHANNELS` channels of the four rows held in registers across the
    tokens."""
    stored = _element_format(element, _storage(values))
    if _storage(weights) != "f32" or _storage(acc) != "f32":
        raise TypingError("weights and acc must be float32")
    sig = types.void(weights, values, lo, hi, acc, r, element)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        w_type, v_type, lo_type, hi_type, acc_type, r_type, _ = signature.args
        w = _Rows(context, builder, w_type, args[0])
        v = _Rows(context, builder, v_type, args[1])
        out = _Rows(context, builder, acc_type, args[4])
        lo_value = context.cast(builder, args[2], lo_type, types.intp)
        hi_value = context.cast(builder, args[3], hi_type, types.intp)
        row = context.cast(builder, args[5], r_type, types.intp)
        acc_rows = [builder.add(row, out.index(i)) for i in range(ROWS)]
        # tile[_TILE_VECTORS * i + c]: row i, channels d + 8 c
        tile = _vector_slots(builder, ROWS * _TILE_VECTORS)
        chunks = cgutils.for_range_slice(
            builder, v.index(0), v.columns, v.index(CHANNELS)
        )
        with chunks as (d, _):
            columns = [builder.add(d, v.index(LANES * c)) for c in range(_TILE_VECTORS)]
            for i in range(ROWS):
                for c, column in enumerate(columns):
                    vector = _load_vector(builder, out, acc_rows[i], column, "f32")
                    builder.store(vector, tile[_TILE_VECTORS * i + c])
            tokens = cgutils.for_range_slice(builder, lo_value, hi_value, v.index(1))
            with tokens as (t, _):
                value_vectors = [
                    _load_vector(builder, v, t, column, stored) for column in columns
                ]
                for i in range(ROWS):
                    p = _splat(builder, builder.load(w.address(w.index(i), t)))
                    for c, value_vector in enumerate(value_vectors):
                        _accumulate(
                            builder, tile[_TILE_VECTORS * i + c], p, value_vector
                        )
            for i in range(ROWS):
                for c, column in enumerate(columns):
                    address = out.address(acc_rows[i], column, _VEC)
                    tile_vector = builder.load(tile[_TILE_VECTORS * i + c])
                    builder.store(tile_vector, address, align=4)
        return context.get_dummy_value()

    return sig, codegen


def qk_tile(
    q_rows: Any, r: int, keys: Any, t: int, scores: Any, kind_code: int
) -> None:  # pragma: no cover - replaced by the overload inside @njit code
    """``scores[i, t + j] = q_rows[r + i] . keys[t + j]`` for i < 4, j < 2,
    `keys` holding elements of `kind_code` (njit only)."""
    raise NotImplementedError("qk_tile is only callable from @njit code")


@overload(qk_tile, inline="always")
def _qk_tile_impl(q_rows: Any, r: Any, keys: Any, t: Any, scores: Any, kind_code: Any):
    # By the stored dtype at compile time; the kind test of half pools is on
    # a constant of each kernel, so LLVM keeps one branch.
    if keys.dtype == types.float32:

        def full(q_rows: Any, r: Any, keys: Any, t: Any, scores: Any, kind_code: Any):
            _qk_tile(q_rows, r, keys, t, scores, "f32")  # pyright: ignore[reportCallIssue]

        return full

    def half(q_rows: Any, r: Any, keys: Any, t: Any, scores: Any, kind_code: Any):
        if kind_code == F16_CODE:
            _qk_tile(q_rows, r, keys, t, scores, "f16")  # pyright: ignore[reportCallIssue]
        else:
            _qk_tile(q_rows, r, keys, t, scores, "bf16")  # pyright: ignore[reportCallIssue]

    return half


def pv_tile(
    weights: Any, values: Any, lo: int, hi: int, acc: Any, r: int, kind_code: int
) -> None:  # pragma: no cover - replaced by the overload inside @njit code
    """``acc[r + i] += weights[i, lo:hi] @ values[lo:hi]`` for i < 4,
    `values` holding elements of `kind_code`; the head dimension a multiple
    of `CHANNELS` (njit only)."""
    raise NotImplementedError("pv_tile is only callable from @njit code")


@overload(pv_tile, inline="always")
def _pv_tile_impl(
    weights: Any, values: Any, lo: Any, hi: Any, acc: Any, r: Any, kind_code: Any
):
    # As for qk_tile.
    if values.dtype == types.float32:

        def full(
            weights: Any, values: Any, lo: Any, hi: Any, acc: Any, r: Any,
            kind_code: Any,
        ):  # fmt: skip
            _pv_tile(weights, values, lo, hi, acc, r, "f32")  # pyright: ignore[reportCallIssue]

        return full

    def half(
        weights: Any, values: Any, lo: Any, hi: Any, acc: Any, r: Any, kind_code: Any
    ):
        if kind_code == F16_CODE:
            _pv_tile(weights, values, lo, hi, acc, r, "f16")  # pyright: ignore[reportCallIssue]
        else:
            _pv_tile(weights, values, lo, hi, acc, r, "bf16")  # pyright: ignore[reportCallIssue]

    return half
