"""Zero-copy bridges between xDSL interpreter tensors and numpy arrays.

xDSL's interpreter represents a tensor as a `ShapedArray`: a shape and a
`TypedPtr` over a byte buffer.  Our kernels want numpy arrays.  Both sides
describe the same bytes, so the bridge only reinterprets:

* `to_numpy` views the ShapedArray's buffer (a `bytearray` or a numpy byte
  array) as an ndarray without copying; writes through the view are seen by
  the interpreter.
* `from_numpy` wraps a C-contiguous ndarray's bytes as a ShapedArray, again
  without copying (a `RawPtr` slices the buffer with `memoryview` and packs
  into it with `struct.pack_into`; a read-only buffer serves every read).

Element types: those of the cache element-type registry in their
`ElementType.host_dtype` form (f32 <-> float32, f16 <-> float16, bf16 <->
uint16 *bit patterns*, since numpy has no bfloat16), plus f64 and the
integers i8..i64 (i32 block tables and ids, say).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    Float64Type,
    IntegerType,
    PackableType,
    TensorType,
)
from xdsl.interpreters.shaped_array import ShapedArray
from xdsl.interpreters.utils.ptr import RawPtr, TypedPtr
from xdsl.ir import Attribute

from llmir.errors import DTypeError, ShapeError
from llmir.runtime.dtypes import element_type_of_ir

_DTYPES: dict[Attribute, np.dtype[Any]] = {}


def numpy_dtype_for(element_type: Attribute) -> np.dtype[Any]:
    """The numpy dtype whose bytes match xDSL's packing of `element_type`."""
    dtype = _DTYPES.get(element_type)
    if dtype is None:
        dtype = _DTYPES[element_type] = _numpy_dtype(element_type)
    return dtype


def _numpy_dtype(element_type: Attribute) -> np.dtype[Any]:
    cache_element = element_type_of_ir(element_type)
    if cache_element is not None:
        return cache_element.host_dtype
    match element_type:
        case Float64Type():
            return np.dtype(np.float64)
        case IntegerType() if element_type.width.data in (8, 16, 32, 64):
            return np.dtype(f"int{element_type.width.data}")
        case _:
            raise DTypeError(f"no numpy representation for element type {element_type}")


_ARRAY = "_llmir_array"
"""The attribute under which `from_numpy` keeps the array a ShapedArray
wraps, so that `to_numpy` of the same tensor is an attribute read."""


def to_numpy(value: ShapedArray[Any]) -> npt.NDArray[Any]:
    """View an interpreter tensor as an ndarray (no copy)."""
    array = value.__dict__.get(_ARRAY)
    if array is not None and list(array.shape) == value.shape:
        return array
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
    # Read-only arrays are wrapped as they are: interpreter tensors are
    # values (every op makes new ones), and the runtime recognises its own
    # read-only results (a step's reserved slots) when they come back.
    data = np.ascontiguousarray(array, dtype=dtype)
    raw = RawPtr(cast(bytearray, data.reshape(-1).view(np.uint8)))
    xtype = cast(PackableType[Any], element_type)
    shaped = ShapedArray(TypedPtr[Any](raw, xtype=xtype), list(data.shape))
    # Same memory: writes through either are seen by the other.
    shaped.__dict__[_ARRAY] = data
    return shaped


def check_tensor(
    value: npt.NDArray[Any], tensor_type: TensorType[Any], what: str
) -> None:
    """Raise a ShapeError/DTypeError unless `value` fits `tensor_type`."""
    expected = numpy_dtype_for(tensor_type.element_type)
    if value.dtype != expected:
        raise DTypeError(
            f"{what} has dtype {value.dtype}, expected {expected} for {tensor_type}"
        )
    shape = tensor_type.get_shape()
    if len(shape) != value.ndim or any(
        d != DYNAMIC_INDEX and d != s for d, s in zip(shape, value.shape, strict=True)
    ):
        raise ShapeError(
            f"{what} has shape {list(value.shape)}, expected {tensor_type}"
        )
