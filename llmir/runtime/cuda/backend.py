"""`CUDABackend`: the KV pool in GPU memory and the numba.cuda kernels over it.

`PagedKVCache(..., device="cuda")` keeps all its bookkeeping on the host
(allocator, block tables, lengths, slot mapping, validation) and holds this
backend for the data.  The pool is allocated once, as a plain device
allocation (``cuda.device_array``, never managed memory), and zeroed so that
lookups of never-written slots read zeros, as on the CPU.

Inputs may live on the host (numpy: copied per call) or on the device: any
object with ``__cuda_array_interface__`` (numba device arrays, torch CUDA
tensors, CuPy arrays) is used in place, without a host round trip, and so
is a GPU array that speaks only DLPack, through CuPy or torch.

This module imports numba.cuda at import time; import it only through
`llmir.runtime.cuda`.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import DTypeError
from llmir.runtime.cuda import launch
from llmir.runtime.cuda.loader import cuda_module
from llmir.runtime.geometry import CacheGeometry
from llmir.runtime.memory import (
    BOOKKEEPING_BYTES_PER_BLOCK,
    check_fits,
    host_memory_bytes,
)
from llmir.runtime.validation import AttentionOptions, BlockTable

cuda = cuda_module()


class CUDABackend:
    """The pool as one device array of `CacheGeometry.pool_shape`; the copy
    and attention kernels of `llmir.runtime.cuda`."""

    device = "cuda"

    def __init__(self, geometry: CacheGeometry, num_blocks: int) -> None:
        check_fits(
            f"a pool of {num_blocks} blocks ({geometry.describe()})",
            geometry.pool_bytes(num_blocks),
            _free_device_memory(),
            "free GPU memory",
        )
        check_fits(
            f"the bookkeeping of {num_blocks} blocks",
            BOOKKEEPING_BYTES_PER_BLOCK * num_blocks,
            host_memory_bytes(),
            "this machine's memory",
        )
        self._geometry = geometry
        self._element = geometry.element_type
        self._pool = cuda.device_array(
            geometry.pool_shape(num_blocks), dtype=self._element.storage_dtype
        )
        _zero_fill(self._pool)

    @property
    def kv_pool(self) -> Any:
        """The device pool (``copy_to_host()`` gives the numpy array)."""
        return self._pool

    def as_array(self, value: Any) -> Any:
        """numpy arrays stay on the host; device arrays (anything with
        ``__cuda_array_interface__``) are wrapped without a copy."""
        if isinstance(value, np.ndarray) or launch.is_device_array(value):
            return value
        if hasattr(value, "__cuda_array_interface__"):
            return cuda.as_cuda_array(value)
        if hasattr(value, "__dlpack__") and _dlpack_on_gpu(value):
            return cuda.as_cuda_array(_from_dlpack(value))
        return np.asarray(value)

    def write(
        self, layer: int | None, keys: Any, values: Any, slot_mapping: Any
    ) -> None:
        launch.append(self._pool, self._element, layer, keys, values, slot_mapping)

    def copy_blocks(
        self, src: npt.NDArray[np.int32], dst: npt.NDArray[np.int32], tokens: int | None
    ) -> None:
        launch.copy_blocks(self._pool, self._element, src, dst, tokens)

    def swap_out(self, block_ids: Any, tier: npt.NDArray[Any], slots: Any) -> None:
        launch.swap_out(self._pool, block_ids, tier, slots)

    def swap_in(self, tier: npt.NDArray[Any], slots: Any, block_ids: Any) -> None:
        launch.swap_in(self._pool, tier, slots, block_ids)

    def gather(
        self,
        layer: int,
        table: BlockTable,
        as_float32: bool,
        out: tuple[Any, Any] | None,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        max_len = table.max_len if out is None else int(out[0].shape[1])
        keys, values = launch.gather(
            self._pool,
            self._element,
            layer,
            table,
            max_len,
            self._geometry.head_dim,
            as_float32,
        )
        if out is None:
            return keys, values
        out[0][...] = keys
        out[1][...] = values
        return out

    def attention(
        self,
        layer: int,
        query: Any,
        table: BlockTable,
        options: AttentionOptions,
        out: Any | None,
        block_mass: Any | None = None,
    ) -> Any:
        return launch.attention(
            self._pool, self._element, layer, query, table, options, out, block_mass
        )


def _free_device_memory() -> int:
    """Free bytes on the current GPU (0, unknown, in the simulator)."""
    try:
        free, _ = cuda.current_context().get_memory_info()
    except Exception:  # no memory to report
        return 0
    # The simulator reports infinitely much.
    return int(free) if math.isfinite(free) else 0


def _dlpack_on_gpu(value: Any) -> bool:
    try:
        device_type, _ = value.__dlpack_device__()
    except (AttributeError, TypeError):
        return False
    return int(device_type) != 1  # kDLCPU


def _from_dlpack(value: Any) -> Any:
    """A GPU array that only speaks DLPack (JAX, say), re-exported in place
    by a library that also speaks ``__cuda_array_interface__``."""
    for name in ("cupy", "torch"):
        try:
            library = importlib.import_module(name)
        except ImportError:
            continue
        return library.from_dlpack(value)
    raise DTypeError(
        f"a {type(value).__name__} on the GPU speaks only DLPack: install cupy or "
        "torch to use it in place, or pass an array with __cuda_array_interface__"
    )


def _zero_fill(device_array: Any) -> None:
    """Zero a device array in place, in chunks of at most 64 MiB of host
    memory (the pool may be larger than is sensible to stage at once)."""
    flat = device_array.reshape(device_array.size)
    chunk = max(1, (64 << 20) // device_array.dtype.itemsize)
    zeros = np.zeros(min(chunk, device_array.size), dtype=device_array.dtype)
    for start in range(0, device_array.size, chunk):
        stop = min(start + chunk, device_array.size)
        flat[start:stop].copy_to_device(zeros[: stop - start])
