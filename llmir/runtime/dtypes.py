"""Storage element types of the KV cache and their conversions.

Numba has no float16 type on the CPU, so half-precision caches store their
elements as ``uint16`` bit patterns and convert inside the kernels:

* ``f16``: LLVM's own ``fpext``/``fptrunc`` between ``half`` and ``float``,
  emitted through tiny `@intrinsic`s.  On x86 with F16C these become single
  ``vcvtph2ps``/``vcvtps2ph`` instructions that vectorize; a 65536-entry lookup
  table was 2-3x slower because gathers block vectorization.  The rounding is
  IEEE round-to-nearest-even with subnormals, infinities and NaN preserved,
  the same as ``numpy.float16`` (tested exhaustively).
* ``bf16``: the upper 16 bits of a float32; decoding is a shift, encoding
  rounds to nearest even and keeps NaN quiet.

All four scalar conversions are callable from any ``@njit`` function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import njit, types  # pyright: ignore[reportUnknownVariableType]
from numba.extending import intrinsic

from llmir.errors import DTypeError

# ---------------------------------------------------------------------------
# Storage kinds


@dataclass(frozen=True)
class StorageKind:
    """One supported element type of a cache: its name, the numpy dtype of
    its stored elements, and the integer code kernels dispatch on."""

    name: str
    code: int
    storage_dtype: np.dtype[Any]

    @property
    def itemsize(self) -> int:
        return self.storage_dtype.itemsize

    @property
    def is_half(self) -> bool:
        return self.itemsize == 2


F32 = StorageKind("f32", 0, np.dtype(np.float32))
F16 = StorageKind("f16", 1, np.dtype(np.uint16))
BF16 = StorageKind("bf16", 2, np.dtype(np.uint16))

STORAGE_KINDS: dict[str, StorageKind] = {k.name: k for k in (F32, F16, BF16)}
_ALIASES = {
    "float32": "f32",
    "fp32": "f32",
    "float16": "f16",
    "half": "f16",
    "fp16": "f16",
    "bfloat16": "bf16",
}


def storage_kind(dtype: str | StorageKind | npt.DTypeLike) -> StorageKind:
    """Resolve ``"f16"``, ``"bfloat16"``, ``np.float16``... to a StorageKind."""
    if isinstance(dtype, StorageKind):
        return dtype
    if isinstance(dtype, str):
        name = _ALIASES.get(dtype.lower(), dtype.lower())
    else:
        names: dict[np.dtype[Any], str] = {
            np.dtype(np.float32): "f32",
            np.dtype(np.float16): "f16",
        }
        try:
            name = names[np.dtype(dtype)]
        except (KeyError, TypeError):
            name = str(dtype)
    if name not in STORAGE_KINDS:
        raise DTypeError(
            f"unsupported KV cache element type {dtype!r}, "
            f"expected one of {', '.join(STORAGE_KINDS)}"
        )
    return STORAGE_KINDS[name]


# ---------------------------------------------------------------------------
# Scalar conversions usable inside @njit code


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
def load_f32(pool_value: Any, kind_code: int) -> Any:
    """Decode one stored element of storage kind `kind_code` to float32."""
    if kind_code == 1:
        return f16_bits_to_f32(pool_value)
    if kind_code == 2:
        return bf16_bits_to_f32(pool_value)
    return np.float32(pool_value)


# ---------------------------------------------------------------------------
# Array conversions (host side, vectorized numpy; used by tests, references
# and for converting user inputs)


def bf16_bits_from_f32_array(x: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """Round a float32 array to bfloat16 bit patterns (nearest even)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    is_nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16
    quiet_nan = (u >> 16) | np.uint32(0x0040)
    return np.where(is_nan, quiet_nan, rounded).astype(np.uint16)


def f32_array_from_bf16_bits(bits: npt.ArrayLike) -> npt.NDArray[np.float32]:
    b = np.ascontiguousarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)


def encode(x: npt.ArrayLike, kind: StorageKind) -> npt.NDArray[Any]:
    """float values -> stored elements of `kind` (a new array)."""
    if kind is F32:
        return np.array(x, dtype=np.float32)
    if kind is F16:
        return np.asarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)
    return bf16_bits_from_f32_array(x)


def decode(stored: npt.ArrayLike, kind: StorageKind) -> npt.NDArray[np.float32]:
    """Stored elements of `kind` -> float32 values (a new array)."""
    if kind is F32:
        return np.array(stored, dtype=np.float32)
    if kind is F16:
        return (
            np.ascontiguousarray(stored, dtype=np.uint16)
            .view(np.float16)
            .astype(np.float32)
        )
    return f32_array_from_bf16_bits(stored)
