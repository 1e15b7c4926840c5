"""Host-side launchers of the CUDA kernels: stage the per-call metadata in
one transfer, pick a launch shape, launch.

Nothing here checks its arguments: `PagedKVCache` validated them once
(`llmir.runtime.validation`) and `CUDABackend` hands them on.  Every function
takes the *device* pool (``cuda.device_array`` of
`CacheGeometry.pool_shape`, storage dtype) and its `ElementType`.  Per-call
inputs may be numpy arrays (copied to the device) or device arrays (used as
they are: the benchmark and torch users keep them resident).  Block tables
and sequence lengths travel together in one int32 buffer.

This module imports numba.cuda at import time; import it only through
`llmir.runtime.cuda`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import ConfigError
from llmir.runtime.cuda.attention_kernels import attention_kernels, shared_floats
from llmir.runtime.cuda.cache_kernels import cache_kernels, copy_kernel, swap_kernels
from llmir.runtime.cuda.codecs import codec
from llmir.runtime.cuda.loader import cuda_module, simulator_enabled
from llmir.runtime.cuda.quant_kernels import (
    QUANTIZE_SHARED_FLOATS_PER_CHANNEL,
    quant_kernels,
)
from llmir.runtime.dtypes import F16, ElementType
from llmir.runtime.geometry import layer_block_size_axis
from llmir.runtime.quantization import AppendRuns
from llmir.runtime.validation import AttentionOptions, BlockTable

cuda = cuda_module()

SHARED_LIMIT_BYTES = 48 * 1024
"""Dynamic shared memory a block may use without an opt-in attribute."""

MIN_BLOCKS_PER_SPLIT = 16
"""A context split covers at least this many KV blocks (256 tokens at block
16): shorter splits cost more in merging than they gain in parallelism."""


def default_threads() -> int:
    """Threads per block: 128 on a GPU; 32 in the simulator, which runs every
    thread as a Python thread."""
    return 32 if simulator_enabled() else 128


def is_device_array(value: Any) -> bool:
    """True for numba device arrays (the simulator's fake ones included, for
    which `cuda.is_cuda_array` does not exist)."""
    return hasattr(value, "copy_to_host")


def kernel_view(pool: Any, element: ElementType, raw: bool = False) -> Any:
    """The pool as kernels index it: f16 bits reinterpreted as float16,
    unless the kernel copies raw bits."""
    if element.quant is not None:
        return pool  # bytes, decoded by the quantized kernels
    dtype = element.storage_dtype if raw else codec(element).kernel_dtype
    return pool if pool.dtype == dtype else pool.view(dtype)


def to_device(value: Any, dtype: Any = None) -> Any:
    """A device array of `value` (host arrays are copied, converted to
    `dtype` when given; device arrays are used as they are)."""
    if is_device_array(value):
        return value
    host = np.ascontiguousarray(value, dtype=dtype)
    return cuda.to_device(host)


# ---------------------------------------------------------------------------
# Append and lookup


def append(
    pool: Any,
    element: ElementType,
    layer: int | None,
    keys: Any,
    values: Any,
    slot_mapping: npt.NDArray[np.int32],
    *,
    threads: int | None = None,
) -> None:
    """Scatter tokens' K/V (``[L, N, H, D]``, L = 1 for one layer, L =
    num_layers with ``layer=None``) into their slots.  float32 inputs are
    encoded to the element type; inputs in the stored form are copied bit for
    bit (float16 is moved as its uint16 bits)."""
    num_tokens = int(slot_mapping.shape[0])
    if num_tokens == 0:
        return
    if element.quant is not None:
        _quantize(pool, element, layer, keys, values, slot_mapping, threads)
        return
    raw = keys.dtype != np.float32
    if raw and keys.dtype == np.float16:
        keys, values = keys.view(np.uint16), values.view(np.uint16)
    d_keys, d_values = to_device(keys), to_device(values)
    d_slots = cuda.to_device(slot_mapping)
    kernels = cache_kernels(element, raw)
    view = kernel_view(pool, element, raw)
    nthreads = threads or default_threads()
    if layer is not None:
        kernels.append_layer[num_tokens, nthreads](
            view[layer], d_keys[0], d_values[0], d_slots
        )
    else:
        kernels.append_all_layers[(num_tokens, view.shape[0]), nthreads](
            view, d_keys, d_values, d_slots
        )


def _quantize(
    pool: Any,
    element: ElementType,
    layer: int | None,
    keys: Any,
    values: Any,
    slot_mapping: npt.NDArray[np.int32],
    threads: int | None,
) -> None:
    """Quantise tokens into their blocks, one thread block per (run, head,
    layer) (`quant_kernels`; runs as the CPU backend forms them)."""
    _, block_size = pool_heads_and_block_size(pool, element)
    runs = AppendRuns.of(slot_mapping, block_size)
    head_dim = int(keys.shape[3])  # [L, N, H, D]
    if not is_device_array(keys) and keys.dtype != np.float16:
        keys, values = keys.astype(np.float32), values.astype(np.float32)
    d_keys, d_values = to_device(keys), to_device(values)
    d_runs = cuda.to_device(np.concatenate((runs.tokens, runs.blocks, runs.offsets)))
    count = runs.count
    target = pool if layer is None else pool[layer : layer + 1]
    quant_kernels(element).quantize_runs[
        (count, pool.shape[2], target.shape[0]),
        threads or default_threads(),
        0,
        4 * QUANTIZE_SHARED_FLOATS_PER_CHANNEL * head_dim,
    ](
        target,
        d_keys,
        d_values,
        d_runs[: count + 1],
        d_runs[count + 1 : 2 * count + 1],
        d_runs[2 * count + 1 :],
    )


def copy_blocks(
    pool: Any,
    element: ElementType,
    src: npt.NDArray[np.int32],
    dst: npt.NDArray[np.int32],
    tokens: int | None,
    *,
    threads: int | None = None,
) -> None:
    """Copy block src[i] to dst[i] in every layer, bit for bit: the whole
    block or its first `tokens` slots."""
    pairs = int(src.shape[0])
    if pairs == 0:
        return
    packed = np.concatenate([src, dst]).astype(np.int32)
    d_ids = cuda.to_device(packed)
    grid = (pairs, pool.shape[0]), threads or default_threads()
    if element.quant is not None:
        # A quantized block's key scales are spread over all its rows:
        # copied whole.
        swap_kernels().copy_whole[grid](_per_block(pool), d_ids[:pairs], d_ids[pairs:])
        return
    block_size = int(pool.shape[4])
    count = block_size if tokens is None else tokens
    copy_kernel()[grid](pool, d_ids[:pairs], d_ids[pairs:], count)


def _per_block(array: Any) -> Any:
    """A pool ``[L, blocks, ...]`` (or a staging buffer ``[blocks, L, ...]``)
    as ``[.., .., elements of one block's layer]``: whole-block copies need
    no layout."""
    return array.reshape(array.shape[0], array.shape[1], -1)


def swap_out(pool: Any, block_ids: Any, tier: npt.NDArray[Any], slots: Any) -> None:
    """Pool blocks to host tier slots: gathered into a block-major device
    buffer by one kernel, copied to the host once, placed in their slots."""
    count = int(block_ids.shape[0])
    if count == 0:
        return
    staging = cuda.device_array((count, *tier.shape[1:]), dtype=pool.dtype)
    swap_kernels().gather[(count, pool.shape[0]), default_threads()](
        _per_block(pool),
        cuda.to_device(np.ascontiguousarray(block_ids, np.int32)),
        _per_block(staging),
    )
    tier[slots] = staging.copy_to_host()


def swap_in(pool: Any, tier: npt.NDArray[Any], slots: Any, block_ids: Any) -> None:
    """Host tier slots back into pool blocks (one copy, one kernel)."""
    count = int(block_ids.shape[0])
    if count == 0:
        return
    staging = cuda.to_device(np.ascontiguousarray(tier[slots]))
    swap_kernels().scatter[(count, pool.shape[0]), default_threads()](
        _per_block(staging),
        _per_block(pool),
        cuda.to_device(np.ascontiguousarray(block_ids, np.int32)),
    )


def metadata_to_device(table: BlockTable) -> tuple[Any, Any]:
    """Copy seq_lens and the block table in one transfer; return device views
    (table, lens)."""
    batch, max_blocks = table.table.shape
    width = max(max_blocks, 1)
    packed = np.full(batch + batch * width, -1, dtype=np.int32)
    packed[:batch] = table.lens
    packed[batch : batch + table.table.size] = table.table.ravel()
    d_packed = cuda.to_device(packed)
    return d_packed[batch:].reshape(batch, width), d_packed[:batch]


def gather(
    pool: Any,
    element: ElementType,
    layer: int,
    table: BlockTable,
    max_len: int,
    head_dim: int,
    as_float32: bool,
    *,
    threads: int | None = None,
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Host keys and values ``[batch, max_len, H, D]`` of one layer, zero past
    each sequence's end; element type as `PagedKVCache.lookup_kv` (a
    quantized type decodes to float32, then to its lookup dtype)."""
    num_heads = int(pool.shape[2])
    raw = element is F16 and not as_float32
    out_dtype = np.uint16 if raw else np.float32
    shape = (table.batch, max_len, num_heads, head_dim)
    if table.batch == 0 or max_len == 0:
        keys = np.zeros(shape, dtype=out_dtype)
        values = np.zeros(shape, dtype=out_dtype)
    else:
        d_table, d_lens = metadata_to_device(table)
        out_k = cuda.device_array(shape, dtype=out_dtype)
        out_v = cuda.device_array(shape, dtype=out_dtype)
        kernel = (
            quant_kernels(element).dequantize
            if element.quant is not None
            else cache_kernels(element, raw).gather
        )
        kernel[(max_len, table.batch), threads or default_threads()](
            kernel_view(pool, element, raw)[layer], d_table, d_lens, out_k, out_v
        )
        keys, values = out_k.copy_to_host(), out_v.copy_to_host()
    if raw:
        return keys.view(np.float16), values.view(np.float16)
    out_dtype = element.out_dtype(as_float32)
    return keys.astype(out_dtype, copy=False), values.astype(out_dtype, copy=False)


# ---------------------------------------------------------------------------
# Attention


def pool_heads_and_block_size(pool: Any, element: ElementType) -> tuple[int, int]:
    """(kv heads, block size) of a pool of `CacheGeometry.pool_shape`."""
    block_axis = 1 + layer_block_size_axis(element.quant is not None)
    return int(pool.shape[2]), int(pool.shape[block_axis])


def sm_count() -> int:
    """Streaming multiprocessors of the current device (1 in the simulator)."""
    if simulator_enabled():
        return 1
    return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


def choose_splits(batch: int, num_kv_heads: int, max_blocks_used: int) -> int:
    """Context splits for decode: enough thread blocks to fill the GPU twice
    over when batch x kv heads alone cannot, never splits shorter than
    MIN_BLOCKS_PER_SPLIT blocks."""
    work = batch * num_kv_heads
    target = 2 * sm_count()
    if work >= target:
        return 1
    by_length = max(1, max_blocks_used // MIN_BLOCKS_PER_SPLIT)
    return max(1, min(by_length, math.ceil(target / max(work, 1))))


@dataclass
class AttentionPlan:
    """One attention call, ready to launch on any layer.

    Block tables and lengths are the same for every layer of a step, so a
    plan copies them to the device once (one transfer) and allocates the
    split-context buffers once; `run` then only launches kernels.
    """

    element: ElementType
    q_shape: tuple[int, int, int, int]
    grid: tuple[int, int, int]
    threads: int
    shared_bytes: int
    num_splits: int
    scalars: tuple[Any, ...]
    """scale, q_tile, parts, blocks_per_split, causal, window, soft_cap."""
    table: Any
    lens: Any
    part_out: Any
    part_max: Any
    part_sum: Any
    block_mass: Any = None
    """Device (batch, H, width) float32 block masses, None when not wanted."""
    mass_parts: Any = None

    def run(self, pool: Any, layer: int, query: Any, out: Any) -> None:
        """Launch on `layer` of `pool`: device arrays `query` (float32 or
        float16) and `out` (float32) of shape ``q_shape``."""
        batch, num_new, num_q_heads, head_dim = self.q_shape
        if batch == 0 or num_new == 0:
            return
        kernels = attention_kernels(self.element)
        block_mass, mass_parts = self.block_mass, self.mass_parts
        if block_mass is None:  # numba only needs arrays of the right rank
            block_mass = cuda.device_array((0, 1, 1), np.float32)
            mass_parts = cuda.device_array((1, 1, 1, 1, 1), np.float32)
        kernels.attention[self.grid, self.threads, 0, self.shared_bytes](
            query,
            kernel_view(pool, self.element)[layer],
            self.table,
            self.lens,
            *self.scalars,
            out,
            self.part_out,
            self.part_max,
            self.part_sum,
            block_mass,
            mass_parts,
        )
        if self.num_splits > 1:
            merge_threads = min(self.threads, head_dim)
            kernels.merge_splits[(batch, num_q_heads), merge_threads](
                self.part_out, self.part_max, self.part_sum, out
            )


def plan_attention(
    pool: Any,
    element: ElementType,
    q_shape: tuple[int, ...],
    table: BlockTable,
    options: AttentionOptions,
    *,
    num_splits: int | None = None,
    threads: int | None = None,
    q_tile: int | None = None,
    block_mass: bool = False,
) -> AttentionPlan:
    """Choose the launch shape of a (validated) attention call and stage its
    metadata on the device.  `num_splits`, `threads` and `q_tile` override
    the heuristics (tests and the benchmark use them).  `block_mass` asks
    for each block's attention mass (`AttentionPlan.block_mass`): one split
    and one query tile per sequence."""
    num_kv_heads, block_size = pool_heads_and_block_size(pool, element)
    batch, num_new, num_q_heads, head_dim = q_shape
    group = num_q_heads // num_kv_heads
    nthreads = threads or default_threads()
    decode = num_new == 1
    if block_mass:
        q_tile, num_splits = max(num_new, 1), 1
    if q_tile is None:
        q_tile = 1 if decode else max(1, min(num_new, 16 // group))
    max_blocks_used = -(-table.max_len // block_size)
    splits = num_splits
    if splits is None:
        splits = choose_splits(batch, num_kv_heads, max_blocks_used) if decode else 1
    if splits < 1 or (splits > 1 and not decode):
        raise ConfigError(f"num_splits {splits} is invalid: >= 1, and 1 unless Tq == 1")
    # No empty trailing splits: recompute the count from the split length.
    blocks_per_split = -(-max(max_blocks_used, 1) // splits)
    splits = -(-max(max_blocks_used, 1) // blocks_per_split)

    rows = q_tile * group
    parts = max(1, min(head_dim, nthreads // (rows * block_size)))
    shared_bytes = 4 * shared_floats(rows, block_size, head_dim, parts)
    if shared_bytes > SHARED_LIMIT_BYTES:
        raise ConfigError(
            f"attention needs {shared_bytes} bytes of shared memory per thread block "
            f"({rows} query rows, block_size {block_size}, head_dim {head_dim}), "
            f"the limit is {SHARED_LIMIT_BYTES}"
        )

    if batch:
        d_table, d_lens = metadata_to_device(table)
    else:
        d_table = d_lens = None
    if splits > 1:
        part_out = cuda.device_array((batch, num_q_heads, splits, head_dim), np.float32)
        part_max = cuda.device_array((batch, num_q_heads, splits), np.float32)
        part_sum = cuda.device_array((batch, num_q_heads, splits), np.float32)
    else:  # unused by the kernel; numba only needs arrays of the right rank
        part_out = cuda.device_array((1, 1, 1, 1), np.float32)
        part_max = part_sum = cuda.device_array((1, 1, 1), np.float32)
    num_q_tiles = -(-num_new // q_tile) if num_new else 0
    mass = mass_parts = None
    if block_mass:
        width = table.table.shape[1]
        mass = cuda.to_device(np.zeros((batch, num_kv_heads, width), np.float32))
        mass_parts = cuda.to_device(
            np.zeros((2, batch, num_kv_heads, rows, width), np.float32)
        )
    scalars = (
        np.float32(options.scale),
        np.int32(q_tile),
        np.int32(parts),
        np.int32(blocks_per_split),
        np.int32(options.causal),
        np.int32(options.sliding_window),
        np.int32(options.sink_tokens),
        np.float32(options.logits_soft_cap),
    )
    return AttentionPlan(
        element=element,
        q_shape=(batch, num_new, num_q_heads, head_dim),
        grid=(batch * num_q_tiles, num_kv_heads, splits),
        threads=nthreads,
        shared_bytes=shared_bytes,
        num_splits=splits,
        scalars=scalars,
        table=d_table,
        lens=d_lens,
        part_out=part_out,
        part_max=part_max,
        part_sum=part_sum,
        block_mass=mass,
        mass_parts=mass_parts,
    )


def attention(
    pool: Any,
    element: ElementType,
    layer: int,
    query: Any,
    table: BlockTable,
    options: AttentionOptions,
    out: Any = None,
    block_mass: Any = None,
    **launch: Any,
) -> Any:
    """Paged attention of one layer of a device pool.

    A host query (numpy float32/float16) gives a host result of its dtype
    (into `out` if given); a device query (float32 or float16) gives a
    float32 device array (or fills the device array `out`).  `launch` goes
    to `plan_attention`.
    """
    q_shape = tuple(query.shape)
    plan = plan_attention(
        pool, element, q_shape, table, options, block_mass=block_mass is not None,
        **launch,
    )  # fmt: skip
    on_device = is_device_array(query)
    d_query = query if on_device else to_device(query, np.float32)
    d_out = out if on_device and out is not None else None
    if d_out is None:
        d_out = cuda.device_array(q_shape, dtype=np.float32)
    plan.run(pool, layer, d_query, d_out)
    if block_mass is not None and plan.block_mass is not None:
        block_mass[...] = plan.block_mass.copy_to_host()
    if on_device:
        return d_out
    result = d_out.copy_to_host()
    if out is None:
        return result.astype(query.dtype, copy=False)
    out[...] = result
    return out
