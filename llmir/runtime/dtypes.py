"""The one registry of KV-cache element types.

Every layer reads this table and nothing else decides which element types a
cache may hold:

* the verifier of ``!llm.paged_kv_cache`` (`ElementType.ir_type`),
* ``convert-llm-to-func``, whose callees are named after the element type of
  the tensors they take (`ElementType.name`),
* the interpreter, which bridges tensors of these types to numpy
  (`ElementType.host_dtype`),
* the runtime, which sizes the pool (`ElementType.storage_dtype`) and accepts
  inputs either as float32 or already in the stored form
  (`ElementType.raw_input_dtypes`),
* both backends, whose kernels dispatch on `ElementType.code` through the
  named constants `F32_CODE`, `F16_CODE`, `BF16_CODE`, `I8_CODE`, `I4_CODE`.

The quantized types (``i8``, ``i4``) carry a `QuantScheme`
(`llmir.runtime.quantization`): their blocks hold codes and scales, so they
have no element-wise encode/decode, and tensors of data never have them.

Numba has no float16 on the CPU, so half-precision caches store uint16 bit
patterns and the kernels convert (``llmir.runtime.cpu.codecs``,
``llmir.runtime.cuda.codecs``).  The host-side conversions below are plain
numpy, used for inputs, references and tests.

This module imports numpy and xDSL's builtin types only, never Numba: the
dialect reads it while ``xdsl-opt`` starts.

Adding an element type: an entry here (name, code, dtypes, IR type,
encode/decode), and its kernels (see ``docs/adding-an-element-type.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from xdsl.dialects.builtin import IntegerType, bf16, f16, f32
from xdsl.ir import Attribute

from llmir.errors import DTypeError
from llmir.runtime.quantization import QuantScheme

Array = npt.NDArray[Any]

F32_CODE = 0
F16_CODE = 1
BF16_CODE = 2
I8_CODE = 3
I4_CODE = 4
RAW_CODE = -1
"""Not an element type: tells the copy kernels to move stored elements bit
for bit (the input already is in the storage form)."""


@dataclass(frozen=True)
class ElementType:
    """One element type a KV cache can hold."""

    name: str
    """The spelling in the IR (``!llm.paged_kv_cache<f16, ...>``), in callee
    names and in the Python API (``PagedKVCache(..., dtype="f16")``)."""
    code: int
    """What kernels dispatch on: one of the ``*_CODE`` constants."""
    storage_dtype: np.dtype[Any]
    """Element of the pool: float32, or uint16 bits for the halves."""
    host_dtype: np.dtype[Any]
    """numpy form of a tensor of this type (interpreter, `--input` files):
    float16 for f16, uint16 bit patterns for bf16 (numpy has no bfloat16)."""
    lookup_dtype: np.dtype[Any]
    """The narrowest numpy type holding the stored values exactly, which
    lookups return unless float32 is asked for."""
    ir_type: Attribute
    """The xDSL type naming this element type in IR."""
    aliases: tuple[str, ...]
    _encode: Callable[[Array], Array] = field(repr=False)
    _decode: Callable[[Array], Array] = field(repr=False)
    quant: QuantScheme | None = None
    """The scheme of a quantized type (`llmir.runtime.quantization`): its
    pool holds codes and scales per (token, head) row, K and V together."""

    @property
    def itemsize(self) -> int:
        """Bytes of one stored element."""
        return self.storage_dtype.itemsize

    def kv_row_bytes(self, head_dim: int, block_size: int) -> int:
        """Bytes one token's key and value of one head take in the pool,
        scales included: what `CacheGeometry` counts blocks and tokens in."""
        if self.quant is not None:
            return self.quant.row_bytes(head_dim, block_size)
        return 2 * head_dim * self.itemsize

    @property
    def is_half(self) -> bool:
        return self.code in (F16_CODE, BF16_CODE)

    @property
    def raw_input_dtypes(self) -> tuple[np.dtype[Any], ...]:
        """Input dtypes copied bit for bit instead of encoded from float32
        (a quantized cache takes float16, quantised like float32)."""
        if self.quant is not None:
            return (np.dtype(np.float16),)
        if self.storage_dtype == np.float32:
            return ()
        return tuple(dict.fromkeys((self.host_dtype, self.storage_dtype)))

    def out_dtype(self, as_float32: bool) -> np.dtype[Any]:
        """Element type of lookup results."""
        return np.dtype(np.float32) if as_float32 else self.lookup_dtype

    def encode(self, values: npt.ArrayLike) -> Array:
        """float values -> stored elements (a new array)."""
        return self._encode(np.asarray(values, dtype=np.float32))

    def decode(self, stored: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Stored elements -> float32 values (a new array)."""
        return self._decode(np.ascontiguousarray(stored, dtype=self.storage_dtype))

    def to_host(self, values: npt.ArrayLike) -> Array:
        """float values as a tensor of this type in numpy form
        (`host_dtype`): converted, or encoded when numpy has no such float."""
        array = np.asarray(values)
        if array.dtype == self.host_dtype:
            return array
        if self.host_dtype.kind == "f":
            return np.ascontiguousarray(array, dtype=self.host_dtype)
        return self.encode(array)

    def from_host(self, array: Array) -> Array:
        """A tensor of this type in numpy form as numpy floats (float32 or
        float16), decoding the forms numpy has no float for."""
        return array if self.host_dtype.kind == "f" else self.decode(array)

    def __str__(self) -> str:
        return self.name


# ---------------------------------------------------------------------------
# Host-side conversions (vectorized numpy)


def bf16_bits_from_f32_array(x: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """Round a float32 array to bfloat16 bit patterns (nearest even, NaN kept
    quiet)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    is_nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16
    quiet_nan = (u >> 16) | np.uint32(0x0040)
    return np.where(is_nan, quiet_nan, rounded).astype(np.uint16)


def f32_array_from_bf16_bits(bits: npt.ArrayLike) -> npt.NDArray[np.float32]:
    b = np.ascontiguousarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)


def _f16_encode(x: Array) -> Array:
    return x.astype(np.float16).view(np.uint16)


def _f16_decode(stored: Array) -> Array:
    return stored.view(np.float16).astype(np.float32)


F32 = ElementType(
    "f32",
    F32_CODE,
    np.dtype(np.float32),
    np.dtype(np.float32),
    np.dtype(np.float32),
    f32,
    ("float32", "fp32"),
    lambda x: x.copy(),
    lambda s: s.copy(),
)
F16 = ElementType(
    "f16",
    F16_CODE,
    np.dtype(np.uint16),
    np.dtype(np.float16),
    np.dtype(np.float16),
    f16,
    ("float16", "half", "fp16"),
    _f16_encode,
    _f16_decode,
)
BF16 = ElementType(
    "bf16",
    BF16_CODE,
    np.dtype(np.uint16),
    np.dtype(np.uint16),
    np.dtype(np.float32),
    bf16,
    ("bfloat16",),
    bf16_bits_from_f32_array,
    f32_array_from_bf16_bits,
)


def _quantized_only(_: Array) -> Array:
    raise DTypeError(
        "a quantized element type has no element-wise form: its codes and "
        "scales live in the cache's blocks (llmir.runtime.quantization)"
    )


I8 = ElementType(
    "i8",
    I8_CODE,
    np.dtype(np.uint8),
    np.dtype(np.float32),
    np.dtype(np.float32),
    IntegerType(8),
    ("int8",),
    _quantized_only,
    _quantized_only,
    QuantScheme(bits=8, symmetric=True, value_group=None, error_bound=2e-2),
)
I4 = ElementType(
    "i4",
    I4_CODE,
    np.dtype(np.uint8),
    np.dtype(np.float32),
    np.dtype(np.float32),
    IntegerType(4),
    ("int4",),
    _quantized_only,
    _quantized_only,
    QuantScheme(bits=4, symmetric=False, value_group=16, error_bound=1.6e-1),
)

ELEMENT_TYPES: dict[str, ElementType] = {t.name: t for t in (F32, F16, BF16, I8, I4)}
"""Every element type, by name."""

FLOAT_TYPES: dict[str, ElementType] = {
    name: t for name, t in ELEMENT_TYPES.items() if t.quant is None
}
"""The element types a tensor of data (keys, values, queries) may have, and
that a cache stores element by element."""

_BY_ALIAS = {alias: t for t in ELEMENT_TYPES.values() for alias in t.aliases}
_BY_NUMPY = {np.dtype(np.float32): F32, np.dtype(np.float16): F16}


def supported_names() -> str:
    """``"f32, f16 or bf16"``, for messages."""
    names = list(ELEMENT_TYPES)
    return ", ".join(names[:-1]) + " or " + names[-1]


def element_type_of_ir(attr: Attribute) -> ElementType | None:
    """The element type an xDSL type names, None if no cache can hold it."""
    for candidate in ELEMENT_TYPES.values():
        if candidate.ir_type == attr:
            return candidate
    return None


def element_type(spec: object) -> ElementType:
    """Resolve ``"f16"``, ``"bfloat16"``, ``np.float16``, an xDSL type or an
    `ElementType` to its registry entry; `DTypeError` for anything else."""
    if isinstance(spec, ElementType):
        return spec
    if isinstance(spec, str):
        name = spec.lower()
        found = ELEMENT_TYPES.get(name) or _BY_ALIAS.get(name)
    elif isinstance(spec, Attribute):
        found = element_type_of_ir(spec)
    else:
        try:
            found = _BY_NUMPY.get(np.dtype(spec))  # pyright: ignore[reportArgumentType, reportCallIssue]
        except TypeError:
            found = None
    if found is None:
        raise DTypeError(
            f"unsupported KV cache element type {spec!r}, expected {supported_names()}"
        )
    return found


def encode(values: npt.ArrayLike, kind: ElementType) -> Array:
    """float values -> stored elements of `kind` (a new array)."""
    return kind.encode(values)


def decode(stored: npt.ArrayLike, kind: ElementType) -> npt.NDArray[np.float32]:
    """Stored elements of `kind` -> float32 values (a new array)."""
    return kind.decode(stored)
