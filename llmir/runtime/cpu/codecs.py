"""Element conversions of the CPU kernels, callable from any ``@njit`` code.

Half-precision pools hold uint16 bit patterns (`llmir.runtime.dtypes`):

* ``f16``: LLVM's own ``fpext``/``fptrunc`` between ``half`` and ``float``,
  emitted through tiny `@intrinsic`s.  On x86 with F16C these become single
  ``vcvtph2ps``/``vcvtps2ph`` instructions that vectorize; a 65536-entry lookup
  table was 2-3x slower because gathers block vectorization.  The rounding is
  IEEE round-to-nearest-even with subnormals, infinities and NaN preserved,
  the same as ``numpy.float16`` (tested exhaustively).
* ``bf16``: the upper 16 bits of a float32; decoding is a shift, encoding
  rounds to nearest even and keeps NaN quiet.

`load_f32` dispatches on an element-type code; the code is loop-invariant
in every kernel that calls it, so LLVM hoists the test out of the loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types  # pyright: ignore[reportUnknownVariableType]
from numba.extending import intrinsic

from llmir.runtime.dtypes import BF16_CODE, F16_CODE


@intrinsic
def _bitcast_f32_to_u32(typingctx: Any, x: Any) -> Any:
    sig = types.uint32(types.float32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _bitcast_u32_to_f32(typingctx: Any, x: Any) -> Any:
    sig = types.float32(types.uint32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _f16_bits_to_f32(typingctx: Any, bits: Any) -> Any:
    sig = types.float32(types.uint16)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        half = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return sig, codegen


@intrinsic
def _f32_to_f16_bits(typingctx: Any, x: Any) -> Any:
    sig = types.uint16(types.float32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        half = builder.fptrunc(args[0], ir.HalfType())
        return builder.bitcast(half, ir.IntType(16))

    return sig, codegen


@njit(inline="always", cache=True)
def f16_bits_to_f32(bits: Any) -> Any:
    """IEEE half bit pattern (uint16) -> float32, exact."""
    return _f16_bits_to_f32(np.uint16(bits))  # pyright: ignore[reportCallIssue]


@njit(inline="always", cache=True)
def f32_to_f16_bits(x: Any) -> Any:
    """float32 -> IEEE half bit pattern, round to nearest even."""
    return _f32_to_f16_bits(np.float32(x))  # pyright: ignore[reportCallIssue]


@njit(inline="always", cache=True)
def bf16_bits_to_f32(bits: Any) -> Any:
    """bfloat16 bit pattern (uint16) -> float32, exact."""
    return _bitcast_u32_to_f32(np.uint32(bits) << np.uint32(16))  # pyright: ignore[reportCallIssue]


@njit(inline="always", cache=True)
def f32_to_bf16_bits(x: Any) -> Any:
    """float32 -> bfloat16 bit pattern, round to nearest even, NaN kept quiet."""
    u = _bitcast_f32_to_u32(np.float32(x))  # pyright: ignore[reportCallIssue]
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(0x0040))
    bias = np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return np.uint16((u + bias) >> np.uint32(16))


@njit(inline="always", cache=True)
def load_f32(stored: Any, code: int) -> Any:
    """Decode one stored element of element type `code` to float32."""
    if code == F16_CODE:
        return f16_bits_to_f32(stored)
    if code == BF16_CODE:
        return bf16_bits_to_f32(stored)
    return np.float32(stored)
