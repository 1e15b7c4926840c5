"""CUDA kernels that write and read the paged pool: append (scatter) and lookup
(gather).  Layout and slot semantics are those of `llmir.runtime.geometry`.

A *slot* is ``block * block_size + offset``: token ``p`` of a sequence whose
block table is ``table`` goes to slot ``table[p // B] * B + p % B``.  The host
computes slot mappings from its bookkeeping; a slot of -1 means "skip this
token" (padding), as in vLLM.

This module imports numba.cuda at import time; import it only through
`llmir.runtime.cuda` (which checks availability first).
"""

from __future__ import annotations

from functools import cache
from typing import Any, NamedTuple

from llmir.runtime.cuda.codecs import codec
from llmir.runtime.cuda.loader import cuda_module
from llmir.runtime.dtypes import ElementType
from llmir.runtime.geometry import KEY, VALUE

# A module global *named* ``cuda`` bound to numba.cuda: the simulator swaps
# exactly such globals for its fake module while a kernel runs.
cuda = cuda_module()


class CacheKernels(NamedTuple):
    append_layer: Any
    append_all_layers: Any
    gather: Any


@cache
def _identity() -> Any:
    @cuda.jit(device=True, inline=True)
    def identity(x: Any) -> Any:
        return x

    return identity


@cache
def cache_kernels(element: ElementType, raw: bool = False) -> CacheKernels:
    """The append/gather kernels specialised to one element type.

    ``raw=True`` copies stored elements bit for bit instead: inputs and
    outputs are in the storage dtype and the pool is indexed as stored.
    """
    encode = _identity() if raw else codec(element).encode
    load = _identity() if raw else codec(element).load

    @cuda.jit
    def append_layer(kv_layer: Any, keys: Any, values: Any, slot_mapping: Any) -> None:
        """Grid (num_tokens,).  kv_layer (num_blocks, H, 2, B, D); keys and
        values (num_tokens, H, D), float32 unless raw; slot_mapping int32
        (num_tokens,)."""
        t = cuda.blockIdx.x
        slot = slot_mapping[t]
        if slot < 0:
            return
        num_heads = kv_layer.shape[1]
        block_size = kv_layer.shape[3]
        head_dim = kv_layer.shape[4]
        block = slot // block_size
        offset = slot - block * block_size
        for i in range(cuda.threadIdx.x, num_heads * head_dim, cuda.blockDim.x):
            h = i // head_dim
            d = i - h * head_dim
            kv_layer[block, h, KEY, offset, d] = encode(keys[t, h, d])
            kv_layer[block, h, VALUE, offset, d] = encode(values[t, h, d])

    @cuda.jit
    def append_all_layers(
        kv_pool: Any, keys: Any, values: Any, slot_mapping: Any
    ) -> None:
        """Grid (num_tokens, num_layers): one decode step's K/V of every layer
        in one launch.  kv_pool (L, num_blocks, H, 2, B, D); keys and values
        float32 (L, num_tokens, H, D)."""
        t = cuda.blockIdx.x
        layer = cuda.blockIdx.y
        slot = slot_mapping[t]
        if slot < 0:
            return
        num_heads = kv_pool.shape[2]
        block_size = kv_pool.shape[4]
        head_dim = kv_pool.shape[5]
        block = slot // block_size
        offset = slot - block * block_size
        for i in range(cuda.threadIdx.x, num_heads * head_dim, cuda.blockDim.x):
            h = i // head_dim
            d = i - h * head_dim
            kv_pool[layer, block, h, KEY, offset, d] = encode(keys[layer, t, h, d])
            kv_pool[layer, block, h, VALUE, offset, d] = encode(values[layer, t, h, d])

    @cuda.jit
    def gather(
        kv_layer: Any, block_tables: Any, seq_lens: Any, out_keys: Any, out_values: Any
    ) -> None:
        """Grid (max_len, batch).  Decodes the first seq_lens[b] tokens of each
        sequence into out_keys/out_values (batch, max_len, H, D), float32
        unless raw; the positions past a sequence's end are set to zero."""
        p = cuda.blockIdx.x
        b = cuda.blockIdx.y
        num_heads = kv_layer.shape[1]
        block_size = kv_layer.shape[3]
        head_dim = kv_layer.shape[4]
        live = p < seq_lens[b]
        block = 0
        offset = 0
        if live:
            block = block_tables[b, p // block_size]
            offset = p - (p // block_size) * block_size
        for i in range(cuda.threadIdx.x, num_heads * head_dim, cuda.blockDim.x):
            h = i // head_dim
            d = i - h * head_dim
            if live:
                out_keys[b, p, h, d] = load(kv_layer[block, h, KEY, offset, d])
                out_values[b, p, h, d] = load(kv_layer[block, h, VALUE, offset, d])
            else:
                out_keys[b, p, h, d] = 0.0
                out_values[b, p, h, d] = 0.0

    return CacheKernels(append_layer, append_all_layers, gather)


@cache
def copy_kernel() -> Any:
    """The block copy kernel (numba specialises it per storage dtype)."""

    @cuda.jit
    def copy_blocks(kv_pool: Any, src: Any, dst: Any, tokens: int) -> None:
        """Grid (pairs, num_layers).  kv_pool (L, num_blocks, H, 2, B, D):
        the first `tokens` slots of block src[i] to block dst[i], K and V of
        every head, as stored."""
        i = cuda.blockIdx.x
        layer = cuda.blockIdx.y
        num_heads = kv_pool.shape[2]
        head_dim = kv_pool.shape[5]
        per_head = 2 * tokens * head_dim
        s = src[i]
        t = dst[i]
        for j in range(cuda.threadIdx.x, num_heads * per_head, cuda.blockDim.x):
            h = j // per_head
            r = j - h * per_head
            kv = r // (tokens * head_dim)
            r -= kv * tokens * head_dim
            offset = r // head_dim
            d = r - offset * head_dim
            kv_pool[layer, t, h, kv, offset, d] = kv_pool[layer, s, h, kv, offset, d]

    return copy_blocks


class SwapKernels(NamedTuple):
    gather: Any
    scatter: Any
    copy_whole: Any


@cache
def swap_kernels() -> SwapKernels:
    """Whole blocks between the pool and a block-major staging buffer, and
    within the pool, over views with one axis for a block's layer
    (``[L, blocks, n]`` and ``[count, L, n]``): a whole block is the same
    bytes whatever its layout (numba specialises per storage dtype)."""

    @cuda.jit
    def gather(kv_pool: Any, ids: Any, staging: Any) -> None:
        """Grid (count, num_layers): staging[i, layer] = pool[layer, ids[i]]."""
        i = cuda.blockIdx.x
        layer = cuda.blockIdx.y
        for j in range(cuda.threadIdx.x, kv_pool.shape[2], cuda.blockDim.x):
            staging[i, layer, j] = kv_pool[layer, ids[i], j]

    @cuda.jit
    def scatter(staging: Any, kv_pool: Any, ids: Any) -> None:
        """Grid (count, num_layers): pool[layer, ids[i]] = staging[i, layer]."""
        i = cuda.blockIdx.x
        layer = cuda.blockIdx.y
        for j in range(cuda.threadIdx.x, kv_pool.shape[2], cuda.blockDim.x):
            kv_pool[layer, ids[i], j] = staging[i, layer, j]

    @cuda.jit
    def copy_whole(kv_pool: Any, src: Any, dst: Any) -> None:
        """Grid (pairs, num_layers): block src[i] to block dst[i]."""
        i = cuda.blockIdx.x
        layer = cuda.blockIdx.y
        for j in range(cuda.threadIdx.x, kv_pool.shape[2], cuda.blockDim.x):
            kv_pool[layer, dst[i], j] = kv_pool[layer, src[i], j]

    return SwapKernels(gather, scatter, copy_whole)
