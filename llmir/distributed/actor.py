"""The Ray actor that holds one shard's pool: a plain llmir `Backend` (CPU
or CUDA) in its own process, running the writes, copies, gathers and
attention the driver sends it on the slots and tables the driver computed.

It keeps no bookkeeping: block ids, lengths and slot mappings arrive with
every call.  Arrays arrive through Ray's object store (read-only, zero-copy
on one node) and results go back the same way.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.runtime.backend import Backend, create_backend
from llmir.runtime.dtypes import element_type
from llmir.runtime.geometry import CacheGeometry
from llmir.runtime.validation import (
    AttentionOptions,
    BlockTable,
    check_attention_options,
)

Array = npt.NDArray[Any]
GeometryArgs = tuple[str, int, int, int, int, int]


class ShardActor:
    """One shard's pool and kernels (wrapped by `ray.remote` in
    `llmir.distributed.backend`)."""

    def __init__(
        self,
        geometry: GeometryArgs,
        num_blocks: int,
        device: str,
        block_mass: bool = False,
    ) -> None:
        name, layers, heads, head_dim, block, max_len = geometry
        self._geometry = CacheGeometry(
            element_type(name), layers, heads, head_dim, block, max_len
        )
        self._backend: Backend = create_backend(device, self._geometry, num_blocks)
        _warm_up(self._geometry, device, block_mass)

    def ready(self) -> bool:
        return True

    def write(
        self, layer: int | None, keys: Array, values: Array, slots: Array
    ) -> None:
        self._backend.write(layer, _writable(keys), _writable(values), _writable(slots))

    def copy_blocks(self, src: Array, dst: Array, tokens: int | None) -> None:
        self._backend.copy_blocks(_writable(src), _writable(dst), tokens)

    def read_blocks(self, ids: Array) -> Array:
        """This shard's part of blocks `ids`, block-major ``[n,
        *CacheGeometry.block_shape()]`` (a swap-out)."""
        g = self._geometry
        out = np.empty((ids.shape[0], *g.block_shape()), g.element_type.storage_dtype)
        self._backend.swap_out(
            _writable(ids), out, np.arange(ids.shape[0], dtype=np.int32)
        )
        return out

    def write_blocks(self, ids: Array, data: Array) -> None:
        """Blocks `ids` from block-major `data` (a swap-in)."""
        self._backend.swap_in(
            _writable(data), np.arange(ids.shape[0], dtype=np.int32), _writable(ids)
        )

    def gather(
        self, layer: int, table: BlockTable, as_float32: bool
    ) -> tuple[Array, Array]:
        keys, values = self._backend.gather(layer, _table(table), as_float32, None)
        return _host(keys), _host(values)

    def attention(
        self,
        layer: int,
        query: Array,
        table: BlockTable,
        options: AttentionOptions,
        want_mass: bool = False,
    ) -> Any:
        """The output, or (output, block mass) with `want_mass`."""
        mass = None
        if want_mass:
            heads = self._backend.kv_pool.shape[2]
            shape = (table.batch, heads, table.table.shape[1])
            mass = np.zeros(shape, np.float32)
        result = self._backend.attention(
            layer, _writable(query), _table(table), options, None, mass
        )
        return _host(result) if mass is None else (_host(result), mass)

    def pool(self) -> Array:
        return _host(self._backend.kv_pool)

    def sleep(self, seconds: float) -> None:
        """Hold the actor busy (tests: a hung shard)."""
        time.sleep(seconds)


def _writable(array: Any) -> Any:
    """Arrays from Ray's object store arrive read-only, which Numba types
    (and compiles) apart from writeable ones: a copy keeps the kernels the
    driver's and the warm-up's (a cold compile could outlast a call's
    timeout)."""
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        return array.copy()
    return array


def _table(table: BlockTable) -> BlockTable:
    return BlockTable(_writable(table.table), _writable(table.lens), table.max_len)


def _host(array: Any) -> Array:
    """A device array's host copy; host arrays as they are."""
    return array.copy_to_host() if hasattr(array, "copy_to_host") else array


def _warm_up(geometry: CacheGeometry, device: str, block_mass: bool) -> None:
    """Run every kernel variant once on a scratch cache, so that compiling
    (or loading them from Numba's cache) happens while the actor starts,
    not inside the first call the driver times out.  `block_mass`: the
    cache prunes heavy hitters, so attention also records block mass (a
    kernel variant of its own)."""
    from llmir.runtime.attention import paged_attention
    from llmir.runtime.kv_cache import PagedKVCache

    scratch = PagedKVCache(
        1,
        geometry.num_heads,
        geometry.head_dim,
        geometry.block_size,
        geometry.max_seq_len,
        geometry.element_type,
        num_blocks=2,
        device=device,
    )
    rows = np.zeros((1, 2, geometry.num_heads, geometry.head_dim), np.float32)
    scratch.append_kv(rows, rows, [0])
    scratch.append_kv_all_layers(rows[None, :, :1], rows[None, :, :1], [0])
    table, lens = scratch.block_table([0])
    for as_float32 in (False, True):
        scratch.lookup_kv(table, lens, 0, as_float32=as_float32)
    # The block-mass variant is asked of the backend directly: a heavy-hitter
    # scratch cache would need a budget this two-block pool cannot hold.
    checked = scratch.validate_block_table(table, lens)
    options = check_attention_options(geometry.head_dim)
    mass = np.zeros((1, geometry.num_heads, table.shape[1]), np.float32)
    for queries in (1, 2):  # decode and prefill
        query = np.zeros((1, queries, geometry.num_heads, geometry.head_dim))
        paged_attention(query.astype(np.float32), scratch, table, lens)
        if block_mass:
            scratch.backend.attention(
                0, query.astype(np.float32), checked, options, None, mass
            )
