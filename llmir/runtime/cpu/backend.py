"""`CPUBackend`: the KV pool in host memory and the Numba kernels over it."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.runtime.cpu.attention_kernels import run_paged_attention
from llmir.runtime.cpu.copy_kernels import blocks_to_tier, tier_to_blocks
from llmir.runtime.cpu.copy_kernels import gather as gather_tokens
from llmir.runtime.cpu.copy_kernels import scatter as scatter_tokens
from llmir.runtime.cpu.quant_kernels import dequantize_slots, quantize_runs
from llmir.runtime.dtypes import RAW_CODE
from llmir.runtime.geometry import CacheGeometry
from llmir.runtime.memory import (
    BOOKKEEPING_BYTES_PER_BLOCK,
    check_fits,
    host_memory_bytes,
)
from llmir.runtime.quantization import AppendRuns
from llmir.runtime.validation import AttentionOptions, BlockTable

Array = npt.NDArray[Any]


class CPUBackend:
    """The pool as one numpy array of `CacheGeometry.pool_shape`, allocated
    once and zeroed (a lookup of a half-appended step reads zeros, not
    garbage, until a block is recycled)."""

    device = "cpu"

    def __init__(self, geometry: CacheGeometry, num_blocks: int) -> None:
        check_fits(
            f"a pool of {num_blocks} blocks ({geometry.describe()})",
            geometry.pool_bytes(num_blocks) + BOOKKEEPING_BYTES_PER_BLOCK * num_blocks,
            host_memory_bytes(),
            "this machine's memory",
        )
        self._geometry = geometry
        self._element = geometry.element_type
        self._pool: Array = np.zeros(
            geometry.pool_shape(num_blocks), dtype=self._element.storage_dtype
        )
        # A quantized type's layout as the kernels take it, derived once:
        # (bits, symmetric, value group, K metadata bytes per row).
        quant = self._element.quant
        self._quant_args: tuple[int, bool, int, int] | None = None
        self._quant_layout: Array | None = None
        if quant is not None:
            meta_row = quant.key_meta_row_bytes(geometry.head_dim, geometry.block_size)
            group = quant.value_group or geometry.head_dim
            self._quant_args = (quant.bits, quant.symmetric, group, meta_row)
            self._quant_layout = np.array([meta_row], np.int64)

    @property
    def kv_pool(self) -> Array:
        return self._pool

    def as_array(self, value: Any) -> Array:
        """Host memory the kernels can read: numpy arrays as they are, and
        anything numpy can view (torch CPU tensors, buffers)."""
        return value if isinstance(value, np.ndarray) else np.asarray(value)

    def write(
        self, layer: int | None, keys: Array, values: Array, slot_mapping: Any
    ) -> None:
        if self._quant_args is not None:
            self._quantize(layer, keys, values, slot_mapping, self._quant_args)
            return
        code = self._element.code if keys.dtype == np.float32 else RAW_CODE
        if keys.dtype == np.float16:
            keys, values = keys.view(np.uint16), values.view(np.uint16)
        pool = self._pool if layer is None else self._pool[layer : layer + 1]
        scatter_tokens(
            pool,
            np.ascontiguousarray(keys),
            np.ascontiguousarray(values),
            slot_mapping,
            self._geometry.block_size,
            code,
        )

    def _quantize(
        self,
        layer: int | None,
        keys: Array,
        values: Array,
        slot_mapping: Any,
        quant_args: tuple[int, bool, int, int],
    ) -> None:
        """Quantise tokens into their blocks, one run of consecutive slots of
        one block at a time (`quant_kernels`)."""
        geometry = self._geometry
        runs = AppendRuns.of(slot_mapping, geometry.block_size)
        if runs.count == 0:
            return
        pool = self._pool if layer is None else self._pool[layer : layer + 1]
        tokens = int(runs.tokens[-1])
        shape = (pool.shape[0], tokens, geometry.num_heads, geometry.head_dim)
        quantize_runs(
            pool,
            np.ascontiguousarray(keys, dtype=np.float32).reshape(shape),
            np.ascontiguousarray(values, dtype=np.float32).reshape(shape),
            runs.tokens,
            runs.blocks,
            runs.offsets,
            *quant_args,
        )

    def copy_blocks(
        self, src: npt.NDArray[np.int32], dst: npt.NDArray[np.int32], tokens: int | None
    ) -> None:
        # numpy's fancy-index copy runs at memory bandwidth; a handful of
        # blocks per call leaves nothing for a kernel to win.  A quantized
        # block's key scales are spread over all its rows: copied whole.
        if tokens is None or self._quant_args is not None:
            self._pool[:, dst] = self._pool[:, src]
        else:
            self._pool[:, dst, :, :, :tokens] = self._pool[:, src, :, :, :tokens]

    def swap_out(self, block_ids: Any, tier: Array, slots: Any) -> None:
        blocks_to_tier(self._pool, block_ids, tier, slots)

    def swap_in(self, tier: Array, slots: Any, block_ids: Any) -> None:
        tier_to_blocks(tier, slots, self._pool, block_ids)

    def gather(
        self,
        layer: int,
        table: BlockTable,
        as_float32: bool,
        out: tuple[Array, Array] | None,
    ) -> tuple[Array, Array]:
        out_dtype = self._element.out_dtype(as_float32)
        if out is None:
            shape = (
                table.batch,
                table.max_len,
                self._geometry.num_heads,
                self._geometry.head_dim,
            )
            out = (np.empty(shape, dtype=out_dtype), np.empty(shape, dtype=out_dtype))
        keys, values = out
        if self._quant_args is not None:
            self._dequantize(layer, table, keys, values, self._quant_args)
            return keys, values
        # Stored elements are copied as they are unless float32 is asked of a
        # half type; float16 outputs are filled through a uint16 view.
        decode = out_dtype == np.float32 and self._element.storage_dtype != np.float32
        code = self._element.code if decode else RAW_CODE
        raw_k, raw_v = (
            (keys.view(np.uint16), values.view(np.uint16))
            if out_dtype == np.float16
            else (keys, values)
        )
        gather_tokens(
            self._pool[layer],
            table.table,
            table.lens,
            raw_k,
            raw_v,
            self._geometry.block_size,
            code,
        )
        return keys, values

    def _dequantize(
        self,
        layer: int,
        table: BlockTable,
        keys: Array,
        values: Array,
        quant_args: tuple[int, bool, int, int],
    ) -> None:
        geometry = self._geometry
        block_size = geometry.block_size
        batch, width = table.batch, table.max_len
        positions = np.arange(width)
        valid = positions[None, :] < table.lens[:, None]
        logical = np.minimum(positions // block_size, table.table.shape[1] - 1)
        physical = np.take_along_axis(
            table.table.astype(np.int64), np.broadcast_to(logical, (batch, width)), 1
        )
        slots = physical * block_size + positions[None, :] % block_size
        ok = valid & (physical >= 0)
        shape = (1, int(ok.sum()), geometry.num_heads, geometry.head_dim)
        out_k = np.empty(shape, np.float32)
        out_v = np.empty(shape, np.float32)
        dequantize_slots(
            self._pool[layer : layer + 1],
            slots[ok],
            out_k,
            out_v,
            block_size,
            *quant_args,
        )
        # Past each sequence's end (and in holes) lookups hold zeros.
        keys[...] = 0
        values[...] = 0
        keys[:, :width][ok] = out_k[0]
        values[:, :width][ok] = out_v[0]

    def attention(
        self,
        layer: int,
        query: Array,
        table: BlockTable,
        options: AttentionOptions,
        out: Array | None,
        block_mass: Array | None = None,
    ) -> Array:
        result = np.empty(query.shape, dtype=query.dtype) if out is None else out
        # The kernel works in float32 on C-contiguous arrays; write straight
        # into `result` when it already is one.
        work = (
            result if result.dtype == np.float32 else np.empty(query.shape, np.float32)
        )
        if query.size:
            run_paged_attention(
                np.ascontiguousarray(query, dtype=np.float32),
                self._pool[layer],
                self._element.code,
                table.table,
                table.lens,
                work,
                scale=options.scale,
                causal=options.causal,
                sliding_window=options.sliding_window,
                logits_soft_cap=options.logits_soft_cap,
                sink_tokens=options.sink_tokens,
                partition_size=options.context_partition or None,
                auto_partition=options.context_partition is None,
                block_mass=block_mass,
                max_len=table.max_len,
                quant=self._quant_layout,
            )
        if work is not result:
            result[...] = work
        return result
