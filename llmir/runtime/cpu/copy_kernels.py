"""Numba CPU kernels that move tokens between user tensors and the pool.

`code` selects the conversion on the way in or out: an element-type code of
`llmir.runtime.dtypes` (``F16_CODE`` encodes/decodes IEEE half bits,
``BF16_CODE`` bfloat16 bits, ``F32_CODE`` copies floats), or ``RAW_CODE``,
which copies stored elements unchanged (the input is already in the storage
form).  Each kernel exists as a serial and a ``prange``
version: a decode step of a few tokens per layer is done before the thread
pool would have woken up, so the caller picks by size (see
`PARALLEL_MIN_ELEMENTS`).
"""

from __future__ import annotations

from typing import Any

from numba import njit, prange  # pyright: ignore[reportUnknownVariableType]

from llmir.runtime.cpu.codecs import (
    bf16_bits_to_f32,
    f16_bits_to_f32,
    f32_to_bf16_bits,
    f32_to_f16_bits,
)
from llmir.runtime.dtypes import BF16_CODE, F16_CODE
from llmir.runtime.geometry import KEY, VALUE

PARALLEL_MIN_ELEMENTS = 1 << 20
"""Below this many elements moved (K and V together) the serial kernel runs.
Measured on our 2-core machine (best of 15, H=8, D=128): two threads win
from ~64 tokens of one layer (131K elements: 8.8 us serial, 6.0 us
parallel), but while other processes load the cores a parallel launch
stalls until the second thread is scheduled (~8 ms, seen for one layer of a
batch-256 decode step: 50 us serial, 4.7 ms parallel).  So single-layer
decode steps (256 tokens: 0.5M elements) stay serial and only bulk copies
(prefill, whole-step decode, long lookups) pay the launch.  A module global
read at call time: the benchmark moves it to compare."""


@njit(inline="always", cache=True)
def _store_row(dst: Any, src: Any, code: int) -> None:
    n = src.shape[0]
    if code == F16_CODE:
        for d in range(n):
            dst[d] = f32_to_f16_bits(src[d])
    elif code == BF16_CODE:
        for d in range(n):
            dst[d] = f32_to_bf16_bits(src[d])
    else:
        for d in range(n):
            dst[d] = src[d]


@njit(inline="always", cache=True)
def _load_row(dst: Any, src: Any, code: int) -> None:
    n = src.shape[0]
    if code == F16_CODE:
        for d in range(n):
            dst[d] = f16_bits_to_f32(src[d])
    elif code == BF16_CODE:
        for d in range(n):
            dst[d] = bf16_bits_to_f32(src[d])
    else:
        for d in range(n):
            dst[d] = src[d]


@njit(inline="always", cache=True)
def _scatter_one(
    pool: Any, keys: Any, values: Any, slots: Any, block_size: int, code: int, i: int
) -> None:
    # Work item i = (layer, token) of the flattened [L, N] iteration space.
    n_tok = keys.shape[1]
    l = i // n_tok
    n = i - l * n_tok
    s = slots[n]
    blk = s // block_size
    off = s - blk * block_size
    for h in range(keys.shape[2]):
        _store_row(pool[l, blk, h, KEY, off], keys[l, n, h], code)
        _store_row(pool[l, blk, h, VALUE, off], values[l, n, h], code)


@njit(cache=True)
def scatter_serial(
    pool: Any, keys: Any, values: Any, slots: Any, block_size: int, code: int
) -> None:
    """pool [L, NB, H, 2, B, D] <- keys/values [L, N, H, D] at `slots` [N]."""
    for i in range(keys.shape[0] * keys.shape[1]):
        _scatter_one(pool, keys, values, slots, block_size, code, i)


@njit(parallel=True, cache=True)
def scatter_parallel(
    pool: Any, keys: Any, values: Any, slots: Any, block_size: int, code: int
) -> None:
    """`scatter_serial` over all threads (slots are distinct, so no races)."""
    for i in prange(keys.shape[0] * keys.shape[1]):
        _scatter_one(pool, keys, values, slots, block_size, code, i)


@njit(inline="always", cache=True)
def _gather_one(
    pool: Any,
    table: Any,
    lens: Any,
    out_k: Any,
    out_v: Any,
    block_size: int,
    code: int,
    i: int,
) -> None:
    max_len = out_k.shape[1]
    b = i // max_len
    p = i - b * max_len
    if p < lens[b]:
        blk = table[b, p // block_size]
        off = p % block_size
        for h in range(out_k.shape[2]):
            _load_row(out_k[b, p, h], pool[blk, h, KEY, off], code)
            _load_row(out_v[b, p, h], pool[blk, h, VALUE, off], code)
    else:
        # Outputs come from np.empty: zero the padding here rather than paying
        # a separate np.zeros pass over the whole output.
        out_k[b, p, :, :] = 0
        out_v[b, p, :, :] = 0


@njit(cache=True)
def gather_serial(
    pool: Any, table: Any, lens: Any, out_k: Any, out_v: Any, block_size: int, code: int
) -> None:
    """out_k/out_v [batch, max_len, H, D] <- one layer's pool [NB, H, 2, B, D]."""
    for i in range(out_k.shape[0] * out_k.shape[1]):
        _gather_one(pool, table, lens, out_k, out_v, block_size, code, i)


@njit(parallel=True, cache=True)
def gather_parallel(
    pool: Any, table: Any, lens: Any, out_k: Any, out_v: Any, block_size: int, code: int
) -> None:
    """`gather_serial` over all threads."""
    for i in prange(out_k.shape[0] * out_k.shape[1]):
        _gather_one(pool, table, lens, out_k, out_v, block_size, code, i)


def scatter(
    pool: Any, keys: Any, values: Any, slots: Any, block_size: int, code: int
) -> None:
    """Pick the serial or parallel scatter by the amount of work."""
    kernel = (
        scatter_parallel if 2 * keys.size >= PARALLEL_MIN_ELEMENTS else scatter_serial
    )
    kernel(pool, keys, values, slots, block_size, code)


def gather(
    pool: Any, table: Any, lens: Any, out_k: Any, out_v: Any, block_size: int, code: int
) -> None:
    """Pick the serial or parallel gather by the amount of work."""
    kernel = (
        gather_parallel if 2 * out_k.size >= PARALLEL_MIN_ELEMENTS else gather_serial
    )
    kernel(pool, table, lens, out_k, out_v, block_size, code)


# ---------------------------------------------------------------------------
# Swapping whole blocks to and from a block-major tier [slots, L, H, 2, B, D]


@njit(parallel=True, cache=True)
def _blocks_to_tier(pool: Any, ids: Any, tier: Any, slots: Any) -> None:
    """pool [L, N, run], tier [S, L, run]: one contiguous run per block and
    layer, copied element by element (a loop LLVM vectorises)."""
    run = pool.shape[2]
    for i in prange(ids.shape[0]):
        block = ids[i]
        slot = slots[i]
        for layer in range(pool.shape[0]):
            for j in range(run):
                tier[slot, layer, j] = pool[layer, block, j]


@njit(parallel=True, cache=True)
def _tier_to_blocks(tier: Any, slots: Any, pool: Any, ids: Any) -> None:
    run = pool.shape[2]
    for i in prange(ids.shape[0]):
        block = ids[i]
        slot = slots[i]
        for layer in range(pool.shape[0]):
            for j in range(run):
                pool[layer, block, j] = tier[slot, layer, j]


def _runs(pool: Any, tier: Any) -> tuple[Any, Any]:
    """The pool as [L, N, run] and the tier as [S, L, run] (views)."""
    layers, blocks = pool.shape[:2]
    return pool.reshape(layers, blocks, -1), tier.reshape(tier.shape[0], layers, -1)


def blocks_to_tier(pool: Any, ids: Any, tier: Any, slots: Any) -> None:
    """tier[slots[i]] = pool[:, ids[i]], every layer (a block is one
    contiguous run per layer in both)."""
    flat_pool, flat_tier = _runs(pool, tier)
    _blocks_to_tier(flat_pool, ids, flat_tier, slots)


def tier_to_blocks(tier: Any, slots: Any, pool: Any, ids: Any) -> None:
    """pool[:, ids[i]] = tier[slots[i]], every layer."""
    flat_pool, flat_tier = _runs(pool, tier)
    _tier_to_blocks(flat_tier, slots, flat_pool, ids)
