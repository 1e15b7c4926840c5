"""Per-element-type load/store as CUDA device functions.

Kernels accumulate in float32 whatever the element type.  How a pool element
is read and written depends on the type (`llmir.runtime.dtypes`):

* f32: as is.
* f16: the host hands kernels the uint16 pool *viewed as float16*, so loads and
  stores are the hardware's native half <-> float conversions (round to nearest
  even), bit-compatible with `llmir.runtime.dtypes`.
* bf16: the pool stays uint16.  Decoding moves the bits into the upper half of
  a float32; encoding rounds to nearest even and keeps NaN quiet, exactly as
  `dtypes.f32_to_bf16_bits`.  On a GPU the float/int reinterpretation is
  libdevice's ``int_as_float``/``float_as_int``; the simulator has no libdevice,
  so there the same two steps are numpy scalar views.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from llmir.errors import DeviceError
from llmir.runtime.cuda.loader import cuda_module, simulator_enabled
from llmir.runtime.dtypes import BF16_CODE, F16_CODE, F32_CODE, ElementType


@dataclass(frozen=True)
class Codec:
    """Device functions ``load(stored) -> float32`` and ``encode(float32) ->
    value to store`` for one element type, and the dtype kernels see the pool
    as (float16 for f16, else the storage dtype)."""

    element: ElementType
    load: Any
    encode: Any
    kernel_dtype: np.dtype[Any]


def bit_casts() -> tuple[Any, Any]:
    """(int32 bits -> float32, float32 -> int32 bits) callable in kernels."""
    cuda = cuda_module()
    if simulator_enabled():

        def int_as_float(bits: Any) -> Any:
            return np.int32(bits).view(np.float32)

        def float_as_int(x: Any) -> Any:
            return np.float32(x).view(np.int32)

        return int_as_float, float_as_int
    return cuda.libdevice.int_as_float, cuda.libdevice.float_as_int


@cache
def codec(element: ElementType) -> Codec:
    """The (cached) codec of one element type."""
    cuda = cuda_module()
    from numba import float32, int32, uint16, uint32

    if element.code == F32_CODE:

        @cuda.jit(device=True, inline=True)
        def load_f32(x: Any) -> Any:
            return float32(x)

        @cuda.jit(device=True, inline=True)
        def encode_f32(x: Any) -> Any:
            return float32(x)

        return Codec(element, load_f32, encode_f32, np.dtype(np.float32))

    if element.code == F16_CODE:

        @cuda.jit(device=True, inline=True)
        def load_f16(x: Any) -> Any:
            return float32(x)

        @cuda.jit(device=True, inline=True)
        def encode_f16(x: Any) -> Any:
            # Stored into a float16 array: the cast is the native f32 -> f16
            # conversion (round to nearest even).
            return float32(x)

        return Codec(element, load_f16, encode_f16, np.dtype(np.float16))

    if element.code != BF16_CODE:
        raise DeviceError(f"the CUDA backend has no kernels for {element.name}")
    int_as_float, float_as_int = bit_casts()

    @cuda.jit(device=True, inline=True)
    def load_bf16(bits: Any) -> Any:
        return int_as_float(int32(uint32(bits) << uint32(16)))

    @cuda.jit(device=True, inline=True)
    def encode_bf16(x: Any) -> Any:
        u = uint32(float_as_int(float32(x)))
        if (u & uint32(0x7FFFFFFF)) > uint32(0x7F800000):
            return uint16((u >> uint32(16)) | uint32(0x0040))
        bias = uint32(0x7FFF) + ((u >> uint32(16)) & uint32(1))
        return uint16((u + bias) >> uint32(16))

    return Codec(element, load_bf16, encode_bf16, np.dtype(np.uint16))
