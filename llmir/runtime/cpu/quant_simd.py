"""The codes of an append, written as LLVM IR: `encode_rows` quantises
``n`` tokens of one head straight from the float32 input into a block's
rows, sixteen channels per vector.

Numba code took 2-3x the time of this loop inside the append kernel, and
not for its arithmetic: each token's row views (``block[t]``, ``x[g *
group:]``) cost an atomic reference-count increment and decrement, which
Numba's pruning leaves in place across the kernel's branches; they were
half the kernel's time (perf, one thread, i8 at block 16).  An intrinsic
addresses the arrays it is given and makes no views.

The arithmetic is `quant_kernels._code`'s, operation for operation (a
multiply, or a subtract then a multiply; round half to even; the clamps as
compare-and-select; no fused multiply-add), so the codes are the same bytes
as the scalar kernels' and the CUDA kernels'.

Preconditions, checked by the callers: the arrays are C-contiguous, the
rows named exist, and `group` is 0 (a scale per channel) or divides the
head dimension (i4: divides D/2, as `QuantScheme.layout_errors` requires).
The codes' symmetry follows `bits` (i8 symmetric, i4 asymmetric), as in
every scheme of `llmir.runtime.quantization`: a scheme pairing them
otherwise needs `_code` here and the kernels' `levels` to agree.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types  # pyright: ignore[reportUnknownVariableType]
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

WIDTH = 16
"""Channels per vector: one AVX-512 register of float32, two AVX2 ones
(LLVM splits wider vectors for the target)."""

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I8 = ir.IntType(8)


def _c_array(array: Any, ndim: int, dtype: Any) -> bool:
    return (
        isinstance(array, types.Array)
        and array.ndim == ndim
        and array.layout == "C"
        and array.dtype == dtype
    )


class _Strided:
    """Byte addresses in a C-contiguous array."""

    def __init__(self, context: Any, builder: Any, array_type: Any, value: Any):
        array = context.make_array(array_type)(context, builder, value)
        self.builder = builder
        self.data = builder.bitcast(array.data, _I8.as_pointer())
        self.strides = cgutils.unpack_tuple(builder, array.strides)
        self.itemsize = context.get_abi_sizeof(context.get_data_type(array_type.dtype))

    def address(self, indices: list[Any], pointee: Any) -> Any:
        b = self.builder
        offset = b.mul(indices[-1], ir.Constant(indices[-1].type, self.itemsize))
        for index, stride in zip(indices[:-1], self.strides, strict=False):
            offset = b.add(offset, b.mul(index, stride))
        return b.bitcast(b.gep(self.data, [offset]), pointee.as_pointer())


def _typed(value_type: Any, value: float | int) -> Any:
    """A constant of a scalar or vector type, splatted over its lanes."""
    if isinstance(value_type, ir.VectorType):
        return ir.Constant(value_type, [value] * value_type.count)
    return ir.Constant(value_type, value)


def _code(builder: Any, x: Any, inverse: Any, offset: Any, bits: int) -> Any:
    """`quant_kernels._code` on a float or a vector of floats, as int32: i8
    symmetric (``rint(x * inverse)`` within +-127, plus 128), i4 asymmetric
    (``rint((x - offset) * inverse)`` within [0, 15])."""
    suffix = f"v{x.type.count}f32" if isinstance(x.type, ir.VectorType) else "f32"
    rint = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(x.type, [x.type]), f"llvm.rint.{suffix}"
    )
    if bits == 8:
        q = builder.call(rint, [builder.fmul(x, inverse)])
        low, high = _typed(x.type, -127.0), _typed(x.type, 127.0)
    else:
        q = builder.call(rint, [builder.fmul(builder.fsub(x, offset), inverse)])
        low, high = _typed(x.type, 0.0), _typed(x.type, 15.0)
    q = builder.select(builder.fcmp_ordered(">", q, low), q, low)
    q = builder.select(builder.fcmp_ordered("<", q, high), q, high)
    words = ir.VectorType(_I32, x.type.count) if x.type != _F32 else _I32
    code = builder.fptosi(q, words)
    return builder.add(code, _typed(words, 128)) if bits == 8 else code


@intrinsic
def _encode_rows(
    typingctx: Any,
    src: Any,
    first: Any,
    n: Any,
    head: Any,
    dst: Any,
    row: Any,
    column: Any,
    inverse: Any,
    offset: Any,
    group: Any,
    bits: Any,
) -> Any:
    """See `encode_rows`; `bits` a literal 8 or 4."""
    if not _c_array(src, 3, types.float32):
        raise TypingError(f"src must be a C-contiguous 3D float32 array, got {src}")
    if not _c_array(dst, 2, types.uint8):
        raise TypingError(f"dst must be a C-contiguous 2D uint8 array, got {dst}")
    for name, scales in (("inverse", inverse), ("offset", offset)):
        if not _c_array(scales, 1, types.float32):
            raise TypingError(f"{name} must be a contiguous 1D float32 array")
    if not isinstance(bits, types.IntegerLiteral) or bits.literal_value not in (8, 4):
        raise TypingError(f"bits must be a literal 8 or 4, got {bits}")
    code_bits = bits.literal_value
    operands = (src, first, n, head, dst, row, column, inverse, offset, group, bits)
    sig = types.void(*operands)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arg_types = signature.args
        source = _Strided(context, builder, arg_types[0], args[0])
        target = _Strided(context, builder, arg_types[4], args[4])
        inverses = _Strided(context, builder, arg_types[7], args[7])
        offsets = _Strided(context, builder, arg_types[8], args[8])

        def intp(k: int) -> Any:
            return context.cast(builder, args[k], arg_types[k], types.intp)

        start, count, h, dst_row, dst_column, group_size = (
            intp(k) for k in (1, 2, 3, 5, 6, 9)
        )
        intp_type = start.type

        def const(value: int) -> Any:
            return ir.Constant(intp_type, value)

        array = context.make_array(arg_types[0])(context, builder, args[0])
        head_dim = builder.extract_value(array.shape, 2)
        # i4: byte j holds channels j (low nibble) and j + D/2 (high).
        half = builder.sdiv(head_dim, const(2))
        span = head_dim if code_bits == 8 else half
        whole = builder.and_(span, const(-WIDTH))
        per_channel = builder.icmp_signed("==", group_size, const(0))
        vector = ir.VectorType(_F32, WIDTH)

        def splat(value: Any) -> Any:
            lane_zero = builder.insert_element(
                ir.Constant(vector, None), value, ir.Constant(_I32, 0)
            )
            return builder.shuffle_vector(
                lane_zero,
                ir.Constant(vector, None),
                ir.Constant(ir.VectorType(_I32, WIDTH), [0] * WIDTH),
            )

        def own_steps(c: Any, lanes: int) -> tuple[Any, Any]:
            """(inverse, offset) of channels c .. c + lanes, each its own."""
            pointee = vector if lanes > 1 else _F32
            loaded = [
                builder.load(a.address([c], pointee), align=4)
                for a in (inverses, offsets)
            ]
            return loaded[0], loaded[1]

        def group_steps(at: Any, lanes: int) -> tuple[Any, Any]:
            """(inverse, offset) number `at`, for `lanes` channels."""
            loaded = [builder.load(a.address([at], _F32)) for a in (inverses, offsets)]
            if lanes == 1:
                return loaded[0], loaded[1]
            return splat(loaded[0]), splat(loaded[1])

        def store(t: Any, j: Any, lanes: int, low: Any, high: Any) -> None:
            """Bytes j .. j + lanes of token t's codes; `low` and `high`
            give the (inverse, offset) of channels j .., and (i4 only, so
            called only then) of j + D/2 .."""
            pointee = vector if lanes > 1 else _F32
            token = builder.add(start, t)

            def codes(c: Any, step: tuple[Any, Any]) -> Any:
                x = builder.load(source.address([token, h, c], pointee), align=4)
                return _code(builder, x, step[0], step[1], code_bits)

            value = codes(j, low())
            if code_bits == 4:
                upper = codes(builder.add(j, half), high())
                value = builder.or_(value, builder.shl(upper, _typed(value.type, 4)))
            byte_type = ir.VectorType(_I8, lanes) if lanes > 1 else _I8
            out = target.address(
                [builder.add(dst_row, t), builder.add(dst_column, j)], byte_type
            )
            builder.store(builder.trunc(value, byte_type), out, align=1)

        def per_channel_rows() -> None:
            with cgutils.for_range(builder, count) as tokens:
                t = tokens.index
                for lanes, (lo, hi, step) in (
                    (WIDTH, (const(0), whole, WIDTH)),
                    (1, (whole, span, 1)),
                ):
                    with cgutils.for_range_slice(builder, lo, hi, const(step)) as (
                        j,
                        _,
                    ):

                        def low(j: Any = j, lanes: int = lanes) -> Any:
                            return own_steps(j, lanes)

                        def high(j: Any = j, lanes: int = lanes) -> Any:
                            return own_steps(builder.add(j, half), lanes)

                        store(t, j, lanes, low, high)

        def grouped_rows() -> None:
            # Whole vectors per group: no division per vector (a 64-bit
            # division per 16 channels would cost as much as their codes).
            groups = builder.sdiv(head_dim, group_size)
            spans = builder.sdiv(span, group_size)  # groups in a row's bytes
            per_group = builder.sdiv(group_size, const(WIDTH))
            with cgutils.for_range(builder, count) as tokens:
                t = tokens.index
                token_base = builder.mul(t, groups)
                with cgutils.for_range(builder, spans) as group_loop:
                    g = group_loop.index
                    low = group_steps(builder.add(token_base, g), WIDTH)
                    high = (
                        group_steps(
                            builder.add(token_base, builder.add(g, spans)), WIDTH
                        )
                        if code_bits == 4
                        else low
                    )
                    with cgutils.for_range(builder, per_group) as vectors:
                        j = builder.add(
                            builder.mul(g, group_size),
                            builder.mul(vectors.index, const(WIDTH)),
                        )
                        store(t, j, WIDTH, lambda: low, lambda: high)

        def any_rows() -> None:
            # Any group: a division per channel (i8 values whose head_dim
            # is no multiple of 16 land here).
            groups = builder.sdiv(head_dim, group_size)
            with cgutils.for_range(builder, count) as tokens:
                t = tokens.index
                token_base = builder.mul(t, groups)
                with cgutils.for_range(builder, span) as channels:
                    j = channels.index
                    low_at = builder.add(token_base, builder.sdiv(j, group_size))
                    high_at = builder.sdiv(builder.add(j, half), group_size)
                    store(
                        t, j, 1,
                        lambda: group_steps(low_at, 1),
                        lambda: group_steps(builder.add(token_base, high_at), 1),
                    )  # fmt: skip

        vectors_per_group = builder.icmp_signed(
            "==", builder.srem(group_size, const(WIDTH)), const(0)
        )
        with builder.if_else(per_channel) as (channels, grouped):
            with channels:
                per_channel_rows()
            with grouped, builder.if_else(vectors_per_group) as (whole_groups, other):
                with whole_groups:
                    grouped_rows()
                with other:
                    any_rows()
        return context.get_dummy_value()

    return sig, codegen


def encode_rows(
    src: Any, first: int, n: int, head: int, dst: Any, row: int, column: int,
    inverse: Any, offset: Any, group: int, bits: int,
) -> None:  # pragma: no cover - replaced by the overload inside @njit code  # fmt: skip
    """The codes of tokens ``first .. first + n`` of head `head` of `src`
    (float32 ``[N, H, D]``) into rows ``row .. row + n`` of `dst` (uint8)
    from byte `column` on: channel c of token t with step ``1 /
    inverse[i]`` and offset ``offset[i]``, where i = c if `group` is 0 (keys:
    a scale per channel) and ``t * (D // group) + c // group`` otherwise
    (values: per token and group; t counted from 0).  `bits` 8: i8,
    symmetric (the offset unused); 4: i4, asymmetric, channels j and ``j +
    D/2`` in byte j (njit only)."""
    raise NotImplementedError("encode_rows is only callable from @njit code")


@overload(encode_rows, inline="always")
def _encode_rows_impl(
    src: Any, first: Any, n: Any, head: Any, dst: Any, row: Any, column: Any,
    inverse: Any, offset: Any, group: Any, bits: Any,
):  # fmt: skip
    def encode(
        src: Any, first: Any, n: Any, head: Any, dst: Any, row: Any, column: Any,
        inverse: Any, offset: Any, group: Any, bits: Any,
    ):  # fmt: skip
        if bits == 8:
            _encode_rows(  # pyright: ignore[reportCallIssue]
                src, first, n, head, dst, row, column, inverse, offset, group, 8
            )
        else:
            _encode_rows(  # pyright: ignore[reportCallIssue]
                src, first, n, head, dst, row, column, inverse, offset, group, 4
            )

    return encode


@intrinsic
def _write_entries(
    typingctx: Any,
    dst: Any,
    row: Any,
    n: Any,
    column: Any,
    step_bits: Any,
    per_row: Any,
    entry: Any,
    mask: Any,
    total: Any,
) -> Any:
    """See `write_entries`; `entry` a literal 2 or 4."""
    if not _c_array(dst, 2, types.uint8):
        raise TypingError(f"dst must be a C-contiguous 2D uint8 array, got {dst}")
    if not _c_array(step_bits, 2, types.int32):
        raise TypingError("step_bits must be a C-contiguous 2D int32 array")
    if not isinstance(entry, types.IntegerLiteral) or entry.literal_value not in (2, 4):
        raise TypingError(f"entry must be a literal 2 or 4, got {entry}")
    masked = mask != types.none
    if masked and not _c_array(mask, 1, types.boolean):
        raise TypingError(f"mask must be None or a 1D bool array, got {mask}")
    entry_bytes = entry.literal_value
    sig = types.void(dst, row, n, column, step_bits, per_row, entry, mask, total)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arg_types = signature.args
        target = _Strided(context, builder, arg_types[0], args[0])
        bits = _Strided(context, builder, arg_types[4], args[4])
        first_row, count, first_column, groups, limit = (
            context.cast(builder, args[k], arg_types[k], types.intp)
            for k in (1, 2, 3, 5, 8)
        )
        intp_type = first_row.type
        words = ir.IntType(16)
        flags = _Strided(context, builder, arg_types[7], args[7]) if masked else None
        with cgutils.for_range(builder, count) as tokens:
            t = tokens.index
            with cgutils.for_range(builder, groups) as entries:
                g = entries.index
                i = builder.add(builder.mul(t, groups), g)
                wanted = builder.icmp_signed("<", i, limit)
                if flags is not None:
                    # Entry 0's flag stands in past the end (a read in bounds).
                    inside = builder.select(wanted, i, ir.Constant(intp_type, 0))
                    flag = builder.load(flags.address([inside], ir.IntType(8)))
                    wanted = builder.and_(
                        wanted,
                        builder.icmp_unsigned("!=", flag, ir.Constant(flag.type, 0)),
                    )
                with builder.if_then(wanted):
                    at = builder.add(
                        first_column,
                        builder.mul(g, ir.Constant(intp_type, entry_bytes)),
                    )
                    dst_row = builder.add(first_row, t)
                    for k in range(entry_bytes // 2):
                        word = builder.load(
                            bits.address([ir.Constant(intp_type, k), i], _I32)
                        )
                        column = builder.add(at, ir.Constant(intp_type, 2 * k))
                        out = target.address([dst_row, column], words)
                        builder.store(builder.trunc(word, words), out, align=1)
        return context.get_dummy_value()

    return sig, codegen


def write_entries(
    dst: Any, row: int, n: int, column: int, step_bits: Any, per_row: int,
    entry: int, mask: Any, total: int,
) -> None:  # pragma: no cover - replaced by the overload inside @njit code  # fmt: skip
    """Metadata entries into rows ``row .. row + n`` of `dst` (uint8), `per_row`
    to a row: entry ``i = t * per_row + g`` at byte ``column + g * entry`` of
    row ``row + t`` holds the low 16 bits of ``step_bits[0, i]`` (a float16
    scale) and, where `entry` is 4, of ``step_bits[1, i]`` (the minimum),
    low byte first; only for ``i < total``, and where `mask` is an array,
    only where ``mask[i]`` (njit only)."""
    raise NotImplementedError("write_entries is only callable from @njit code")


@overload(write_entries, inline="always")
def _write_entries_impl(
    dst: Any, row: Any, n: Any, column: Any, step_bits: Any, per_row: Any,
    entry: Any, mask: Any, total: Any,
):  # fmt: skip
    def write(
        dst: Any, row: Any, n: Any, column: Any, step_bits: Any, per_row: Any,
        entry: Any, mask: Any, total: Any,
    ):  # fmt: skip
        if entry == 2:
            _write_entries(dst, row, n, column, step_bits, per_row, 2, mask, total)  # pyright: ignore[reportCallIssue]
        else:
            _write_entries(dst, row, n, column, step_bits, per_row, 4, mask, total)  # pyright: ignore[reportCallIssue]

    return write
