"""`CPUStorage`: the KV pool in host memory, moved by the Numba kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.runtime import cpu_kernels
from llmir.runtime.dtypes import F32, StorageKind
from llmir.runtime.layout import pool_shape
from llmir.runtime.storage import lookup_dtype


class CPUStorage:
    """The pool as one numpy array, allocated once (see `llmir.runtime.layout`).

    The pool starts zeroed, so a lookup of a half-appended step reads zeros,
    not garbage, until a block is recycled.
    """

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
        self._block_size = block_size
        self._pool: npt.NDArray[Any] = np.zeros(
            pool_shape(num_layers, num_blocks, num_heads, block_size, head_dim),
            dtype=kind.storage_dtype,
        )

    @property
    def kind(self) -> StorageKind:
        return self._kind

    @property
    def kv_pool(self) -> npt.NDArray[Any]:
        return self._pool

    def write(
        self, layer: int | None, keys: Any, values: Any, slot_mapping: Any
    ) -> None:
        code = self._kind.code if keys.dtype == np.float32 else cpu_kernels.RAW
        if keys.dtype == np.float16:
            keys, values = keys.view(np.uint16), values.view(np.uint16)
        pool = self._pool if layer is None else self._pool[layer : layer + 1]
        cpu_kernels.scatter(pool, keys, values, slot_mapping, self._block_size, code)

    def gather(
        self,
        layer: int,
        block_table: Any,
        seq_lens: Any,
        max_len: int,
        as_float32: bool,
        out: tuple[Any, Any] | None = None,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        out_dtype = lookup_dtype(self._kind, as_float32)
        if out is None:
            _, _, heads, _, _, dim = self._pool.shape
            shape = (block_table.shape[0], max_len, heads, dim)
            keys = np.empty(shape, dtype=out_dtype)
            values = np.empty(shape, dtype=out_dtype)
        else:
            keys, values = out
        # Stored elements are copied as they are unless float32 is asked of a
        # half type; float16 outputs are filled through a uint16 view.
        decode = out_dtype == np.float32 and self._kind is not F32
        code = self._kind.code if decode else cpu_kernels.RAW
        raw_k, raw_v = (
            (keys.view(np.uint16), values.view(np.uint16))
            if out_dtype == np.float16
            else (keys, values)
        )
        cpu_kernels.gather(
            self._pool[layer],
            block_table,
            seq_lens,
            raw_k,
            raw_v,
            self._block_size,
            code,
        )
        return keys, values
