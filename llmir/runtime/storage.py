"""The seam between bookkeeping and tensor storage.

`PagedKVCache` does all host-side bookkeeping itself (allocator, block
tables, lengths, validation, slot mapping) and hands only the data movement to
a `KVStorage`.  The CPU backend is `llmir.runtime.cpu_storage.CPUStorage`; a
CUDA backend lives in `llmir.runtime.cuda` and must provide

    create_storage(*, num_layers, num_blocks, num_heads, block_size,
                   head_dim, kind) -> KVStorage

raising `llmir.errors.DeviceError` when no GPU is usable.

Conventions for every backend:
  * the pool follows `llmir.runtime.layout` exactly;
  * a *slot mapping* is an int32 array ``[N]``, one entry per token, with
    ``slot = block * block_size + offset``;
  * `write` receives keys/values already checked by the cache: C-contiguous,
    ``[L, N, H, D]`` (``L == num_layers`` for a whole-step write, ``1`` for a
    single layer), dtype float32 (to be encoded) or the storage dtype (copied
    bit for bit);
  * `gather` receives a block table and lengths already checked by
    `validate_block_table`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from llmir.runtime.dtypes import F16, StorageKind


def lookup_dtype(kind: StorageKind, as_float32: bool) -> np.dtype[Any]:
    """Element type of lookup results: the narrowest numpy type holding the
    stored values exactly (float16 for f16, float32 for f32 and bf16), or
    float32 for every kind with `as_float32`."""
    if kind is F16 and not as_float32:
        return np.dtype(np.float16)
    return np.dtype(np.float32)


@runtime_checkable
class KVStorage(Protocol):
    """Storage of the KV pool plus the kernels that move data in and out."""

    @property
    def kind(self) -> StorageKind: ...

    @property
    def kv_pool(self) -> Any:
        """The pool array (numpy on the CPU, a device array on a GPU)."""
        ...

    def write(
        self, layer: int | None, keys: Any, values: Any, slot_mapping: Any
    ) -> None:
        """Scatter tokens into the pool: to `layer`, or to all layers when
        `layer` is None (then keys/values carry every layer)."""
        ...

    def gather(
        self,
        layer: int,
        block_table: Any,
        seq_lens: Any,
        max_len: int,
        as_float32: bool,
    ) -> tuple[Any, Any]:
        """Host arrays ``[batch, max_len, H, D]`` of element type
        `lookup_dtype`, zero past each sequence's length.  (`CPUStorage`
        also takes ``out=`` buffers; the cache copies into the caller's
        buffers for backends that do not.)"""
        ...
