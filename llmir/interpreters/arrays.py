"""Zero-copy bridges between xDSL interpreter tensors and numpy arrays.

xDSL's interpreter represents a tensor as a `ShapedArray`: a shape and a
`TypedPtr` over a byte buffer.  Our kernels want numpy arrays.  Both sides
describe the same bytes, so the bridge only reinterprets:

* `to_numpy` views the ShapedArray's buffer (a `bytearray` or a numpy byte
  array) as an ndarray without copying; writes through the view are seen by
  the interpreter.
* `from_numpy` wraps a C-contiguous ndarray's bytes as a ShapedArray, again
  without copying (a `RawPtr` only needs a writable buffer: it slices it with
  `memoryview` and packs into it with `struct.pack_into`).

Element types: f32 <-> float32, f16 <-> float16, i32 <-> int32, i64 <-> int64,
i1 <-> bool, and bf16 <-> uint16 *bit patterns* (numpy has no bfloat16; the
runtime treats uint16 input to a bf16 cache as already-encoded bits).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt
from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    IntegerType,
    PackableType,
    TensorType,
)
from xdsl.interpreters.shaped_array import ShapedArray
from xdsl.interpreters.utils.ptr import RawPtr, TypedPtr
from xdsl.ir import Attribute

from llmir.errors import DTypeError


def numpy_dtype_for(element_type: Attribute) -> np.dtype[Any]:
    """The numpy dtype whose bytes match xDSL's packing of `element_type`."""
    match element_type:
        case Float32Type():
            return np.dtype(np.float32)
        case Float16Type():
            return np.dtype(np.float16)
        case BFloat16Type():
            return np.dtype(np.uint16)
        case Float64Type():
            return np.dtype(np.float64)
        case IntegerType() if element_type.width.data in (8, 16, 32, 64):
            return np.dtype(f"int{element_type.width.data}")
        case _:
            raise DTypeError(f"no numpy representation for element type {element_type}")


def to_numpy(value: ShapedArray[Any]) -> npt.NDArray[Any]:
    """View an interpreter tensor as an ndarray (no copy)."""
    ptr = value.data_ptr
    dtype = numpy_dtype_for(cast(Attribute, ptr.xtype))
    flat = np.frombuffer(
        cast(Any, ptr.raw.memory), dtype=dtype, count=value.size, offset=ptr.raw.offset
    )
    return flat.reshape(value.shape)


def from_numpy(array: npt.ArrayLike, element_type: Attribute) -> ShapedArray[Any]:
    """Wrap an ndarray as an interpreter tensor of `element_type`.

    No copy is made when `array` already is C-contiguous with the matching
    dtype; otherwise it is converted once.
    """
    dtype = numpy_dtype_for(element_type)
    data = np.ascontiguousarray(array, dtype=dtype)
    if not data.flags.writeable:
        data = data.copy()
    raw = RawPtr(cast(bytearray, data.reshape(-1).view(np.uint8)))
    xtype = cast(PackableType[Any], element_type)
    return ShapedArray(TypedPtr[Any](raw, xtype=xtype), list(data.shape))


def check_tensor(
    value: npt.NDArray[Any], tensor_type: TensorType[Any], what: str
) -> None:
    """Raise a ShapeError/DTypeError unless `value` fits `tensor_type`."""
    from llmir.errors import ShapeError

    expected = numpy_dtype_for(tensor_type.element_type)
    if value.dtype != expected:
        raise DTypeError(
            f"{what} has dtype {value.dtype}, expected {expected} for {tensor_type}"
        )
    shape = tensor_type.get_shape()
    if len(shape) != value.ndim or any(
        d != -1 and d != s for d, s in zip(shape, value.shape, strict=True)
    ):
        raise ShapeError(
            f"{what} has shape {list(value.shape)}, expected {tensor_type}"
        )
