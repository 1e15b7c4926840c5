"""`CudaKVStorage`: the KV pool in GPU memory, behind the `KVStorage` seam.

`PagedKVCache(..., device="cuda")` keeps all its bookkeeping on the host
(allocator, block tables, lengths, slot mapping, validation) and calls
`create_storage`, which returns this class.  The pool is allocated once, as a
plain device allocation (``cuda.device_array``, never managed memory), and
zeroed so that lookups of never-written slots read zeros, as on the CPU.

This module imports numba.cuda at import time; import it only through
`llmir.runtime.cuda`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.runtime.cuda import ops
from llmir.runtime.cuda.loader import cuda_module
from llmir.runtime.dtypes import StorageKind
from llmir.runtime.layout import pool_shape
from llmir.runtime.validation import check_layer

cuda = cuda_module()


class CudaKVStorage:
    """The pool as one device array of `layout.pool_shape`; the copy kernels
    of `llmir.runtime.cuda.cache_kernels`."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        num_heads: int,
        block_size: int,
        head_dim: int,
        kind: StorageKind,
    ) -> None:
        self._kind = kind
        shape = pool_shape(num_layers, num_blocks, num_heads, block_size, head_dim)
        self._pool = cuda.device_array(shape, dtype=kind.storage_dtype)
        _zero_fill(self._pool)

    @property
    def kind(self) -> StorageKind:
        return self._kind

    @property
    def kv_pool(self) -> Any:
        """The device pool (``copy_to_host()`` gives the numpy array)."""
        return self._pool

    def write(
        self, layer: int | None, keys: Any, values: Any, slot_mapping: Any
    ) -> None:
        """Keys/values ``[L, N, H, D]`` (``L == 1`` for one layer) into their
        slots; float32 is encoded, the storage representation copied."""
        if layer is None:
            ops.append_kv(
                self._pool, self._kind, keys, values, slot_mapping, layer=None
            )
        else:
            ops.append_kv(
                self._pool, self._kind, keys[0], values[0], slot_mapping, layer=layer
            )

    def gather(
        self,
        layer: int,
        block_table: Any,
        seq_lens: Any,
        max_len: int,
        as_float32: bool,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """Host arrays ``[batch, max_len, H, D]`` of one layer, zero past each
        sequence's length (element type as `PagedKVCache.lookup_kv`)."""
        return ops.gather_kv(
            self._pool,
            self._kind,
            layer,
            block_table,
            seq_lens,
            max_len=max_len,
            as_float32=as_float32,
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


def create_storage(
    *,
    num_layers: int,
    num_blocks: int,
    num_heads: int,
    block_size: int,
    head_dim: int,
    kind: StorageKind,
) -> CudaKVStorage:
    """The `KVStorage` factory `PagedKVCache(device="cuda")` calls."""
    return CudaKVStorage(
        num_layers=num_layers,
        num_blocks=num_blocks,
        num_heads=num_heads,
        block_size=block_size,
        head_dim=head_dim,
        kind=kind,
    )


def paged_attention(
    query: Any,
    cache: Any,
    block_table: npt.ArrayLike,
    seq_lens: npt.ArrayLike,
    layer: int = 0,
    scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    **launch: Any,
) -> Any:
    """`llmir.runtime.attention.paged_attention` for a cache whose pool is on
    the GPU (``PagedKVCache(..., device="cuda")``): same arguments, same
    semantics, the table checked by the cache's own `validate_block_table`.
    Extra keyword arguments go to `ops.paged_attention_on_pool`."""
    table, lens = cache.validate_block_table(block_table, seq_lens)
    check_layer(layer, cache.num_layers)
    return ops.paged_attention_on_pool(
        cache.kv_pool,
        cache.kind,
        layer,
        query,
        table,
        lens,
        scale,
        causal=causal,
        sliding_window=sliding_window,
        logits_soft_cap=logits_soft_cap,
        **launch,
    )
