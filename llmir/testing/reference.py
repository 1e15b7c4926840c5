"""Plain numpy references for the runtime kernels, shared by the CPU and GPU
tests: slow, obvious, float64.

* `build_paged_pool` scatters dense per-sequence keys and values into a
  freshly made pool of the layout of `llmir.runtime.geometry`, through a
  shuffled block assignment, and returns the pool with its block table.
  Slots no sequence owns are filled with NaN, so a kernel that reads past a
  sequence's end (or through a padding entry) poisons its output.
* `reference_paged_attention` gathers each sequence's keys and values back
  out of a pool through its block table, decodes them to float64 and runs
  dense masked softmax attention.

Both follow the semantics of `llmir.runtime.attention`: the
``Tq`` queries of a sequence of length ``L`` sit at positions ``L - Tq`` ..
``L - 1``; query position ``pos`` attends key position ``t`` when
``0 <= t < L``, ``t <= pos`` if causal, and ``t > pos - sliding_window`` or
``t < sink_tokens`` if a window is given; a query that attends no key yields
zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.runtime.dtypes import ElementType
from llmir.runtime.geometry import KEY, PAD_BLOCK, VALUE, CacheGeometry
from llmir.runtime.quantization import BlockLayout, dequantize_block


@dataclass(frozen=True)
class PagedPool:
    """A pool built by `build_paged_pool`: everything a kernel needs."""

    kv_pool: npt.NDArray[Any]
    """(num_layers, num_blocks, num_heads, 2, block_size, head_dim), stored."""
    block_table: npt.NDArray[np.int32]
    """int32 [batch, max_blocks], padded with -1."""
    seq_lens: npt.NDArray[np.int32]
    """int32 [batch]."""
    kind: ElementType


def build_paged_pool(
    keys: Sequence[npt.ArrayLike],
    values: Sequence[npt.ArrayLike],
    block_size: int,
    kind: ElementType,
    rng: np.random.Generator,
    *,
    num_layers: int = 1,
    layer: int = 0,
    spare_blocks: int = 3,
    spare_table_columns: int = 1,
) -> PagedPool:
    """Store dense per-sequence ``keys[b]``/``values[b]`` (``[L_b, H, D]``)
    of `layer` in a new pool, each logical block in a randomly chosen
    physical block.

    The pool has `spare_blocks` blocks that no sequence uses and the table
    `spare_table_columns` extra padding columns, so kernels are exercised
    with padding and unowned blocks around.  Every element not written is
    NaN (in the storage kind's encoding).
    """
    if len(keys) != len(values):
        raise ValueError("keys and values need one entry per sequence")
    dense_k = [np.asarray(k, dtype=np.float32) for k in keys]
    dense_v = [np.asarray(v, dtype=np.float32) for v in values]
    num_heads, head_dim = dense_k[0].shape[1:]
    lens = [k.shape[0] for k in dense_k]
    blocks_per_seq = [-(-n // block_size) for n in lens]
    used = sum(blocks_per_seq)
    num_blocks = used + spare_blocks
    width = max([0, *blocks_per_seq]) + spare_table_columns

    geometry = CacheGeometry(
        kind, num_layers, num_heads, head_dim, block_size, max([1, *lens])
    )
    shape = geometry.pool_shape(num_blocks)
    pool = kind.encode(np.full(shape, np.nan, dtype=np.float32))
    table = np.full((len(keys), width), PAD_BLOCK, dtype=np.int32)
    physical = rng.permutation(num_blocks)[:used]

    next_block = 0
    for b, (k, v) in enumerate(zip(dense_k, dense_v, strict=True)):
        for logical in range(blocks_per_seq[b]):
            block = int(physical[next_block])
            next_block += 1
            table[b, logical] = block
            lo = logical * block_size
            hi = min(lens[b], lo + block_size)
            # [tokens, H, D] -> [H, tokens, D], the slot order of a block.
            pool[layer, block, :, KEY, : hi - lo] = kind.encode(
                k[lo:hi].transpose(1, 0, 2)
            )
            pool[layer, block, :, VALUE, : hi - lo] = kind.encode(
                v[lo:hi].transpose(1, 0, 2)
            )
    return PagedPool(pool, table, np.asarray(lens, dtype=np.int32), kind)


def gather_sequence(
    layer_pool: npt.NDArray[Any],
    kind: ElementType,
    table_row: npt.NDArray[np.integer[Any]],
    seq_len: int,
    head_dim: int | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Dense float64 keys and values ``[seq_len, H, D]`` of one sequence
    (a quantized pool's decoded as its scheme says, which needs `head_dim`;
    a -1 entry reads as zeros there)."""
    if kind.quant is not None:
        assert head_dim is not None, "a quantized pool's rows need head_dim"
        return _gather_quantized(layer_pool, kind, table_row, seq_len, head_dim)
    block_size = layer_pool.shape[3]
    num_blocks = -(-seq_len // block_size)
    blocks = [int(b) for b in table_row[:num_blocks]]
    # [blocks, H, block_size, D] -> [blocks * block_size, H, D]
    k = layer_pool[blocks, :, KEY].transpose(0, 2, 1, 3)
    v = layer_pool[blocks, :, VALUE].transpose(0, 2, 1, 3)
    head_shape = layer_pool.shape[1], layer_pool.shape[4]
    k = kind.decode(k).reshape(-1, *head_shape)[:seq_len]
    v = kind.decode(v).reshape(-1, *head_shape)[:seq_len]
    return k.astype(np.float64), v.astype(np.float64)


def _gather_quantized(
    layer_pool: npt.NDArray[Any],
    kind: ElementType,
    table_row: npt.NDArray[np.integer[Any]],
    seq_len: int,
    head_dim: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    assert kind.quant is not None
    _, num_heads, block_size, _ = layer_pool.shape
    layout = BlockLayout(kind.quant, head_dim, block_size)
    num_blocks = -(-seq_len // block_size)
    k = np.zeros((num_blocks * block_size, num_heads, head_dim))
    v = np.zeros_like(k)
    for logical, block in enumerate(int(b) for b in table_row[:num_blocks]):
        if block < 0:
            continue
        rows = slice(logical * block_size, (logical + 1) * block_size)
        for h in range(num_heads):
            k[rows, h], v[rows, h] = dequantize_block(layer_pool[block, h], layout)
    return k[:seq_len], v[:seq_len]


def reference_paged_attention(
    query: npt.ArrayLike,
    layer_pool: npt.NDArray[Any],
    kind: ElementType,
    block_table: npt.NDArray[np.integer[Any]],
    seq_lens: npt.NDArray[np.integer[Any]],
    *,
    scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    sink_tokens: int = 0,
) -> npt.NDArray[np.float64]:
    """Attention of ``query [batch, Tq, Hq, D]`` over one layer's pool
    ``[num_blocks, H, 2, block_size, D]``, in float64, by gathering and
    dense softmax.  The semantics are in the module docstring; a -1 entry
    inside a sequence's blocks (a pruned block) hides its tokens."""
    out, _ = _reference_attention(
        query, layer_pool, kind, block_table, seq_lens, scale, causal,
        sliding_window, logits_soft_cap, sink_tokens,
    )  # fmt: skip
    return out


def reference_block_mass(
    query: npt.ArrayLike,
    layer_pool: npt.NDArray[Any],
    kind: ElementType,
    block_table: npt.NDArray[np.integer[Any]],
    seq_lens: npt.NDArray[np.integer[Any]],
    *,
    scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    sink_tokens: int = 0,
) -> npt.NDArray[np.float64]:
    """The attention mass of each logical block, ``[batch, H, width]``: the
    softmax weights of its tokens summed over queries and the query heads of
    each kv head (what `run_paged_attention(block_mass=...)` returns)."""
    _, mass = _reference_attention(
        query, layer_pool, kind, block_table, seq_lens, scale, causal,
        sliding_window, logits_soft_cap, sink_tokens,
    )  # fmt: skip
    return mass


def _reference_attention(
    query: npt.ArrayLike,
    layer_pool: npt.NDArray[Any],
    kind: ElementType,
    block_table: npt.NDArray[np.integer[Any]],
    seq_lens: npt.NDArray[np.integer[Any]],
    scale: float | None,
    causal: bool,
    sliding_window: int | None,
    logits_soft_cap: float | None,
    sink_tokens: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    q = np.asarray(query, dtype=np.float64)
    batch, tq, hq, head_dim = q.shape
    num_heads = layer_pool.shape[1]
    block_size = layer_pool.shape[2 if kind.quant is not None else 3]
    group = hq // num_heads
    scale = 1.0 / np.sqrt(head_dim) if scale is None else float(scale)
    out = np.zeros(q.shape, dtype=np.float64)
    width = block_table.shape[1]
    mass = np.zeros((batch, num_heads, width), dtype=np.float64)
    for b in range(batch):
        seq_len = int(seq_lens[b])
        k, v = gather_sequence(layer_pool, kind, block_table[b], seq_len, head_dim)
        kept = np.repeat(block_table[b, : -(-seq_len // block_size)] >= 0, block_size)
        kept = kept[:seq_len]
        k[~kept] = 0.0  # a hole's slots are someone else's (or NaN): unread
        v[~kept] = 0.0
        # Every query head reads the kv head of its group.
        k = np.repeat(k, group, axis=1)  # [L, Hq, D]
        v = np.repeat(v, group, axis=1)
        logits = np.einsum("qhd,thd->hqt", q[b], k) * scale
        if logits_soft_cap is not None:
            logits = logits_soft_cap * np.tanh(logits / logits_soft_cap)
        positions = seq_len - tq + np.arange(tq)[:, None]  # [Tq, 1]
        keys_at = np.arange(seq_len)[None, :]  # [1, L]
        allowed = np.ones((tq, seq_len), dtype=bool)
        if causal:
            allowed &= keys_at <= positions
        if sliding_window is not None:
            allowed &= (keys_at > positions - sliding_window) | (keys_at < sink_tokens)
        allowed &= kept[None, :]
        logits = np.where(allowed[None], logits, -np.inf)
        row_max = logits.max(axis=-1, keepdims=True, initial=-np.inf)
        weights = np.exp(logits - np.where(np.isfinite(row_max), row_max, 0.0))
        total = weights.sum(axis=-1, keepdims=True)
        weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
        out[b] = np.einsum("hqt,thd->qhd", weights, v)
        # [Hq, Tq, L] -> per kv head and block.
        per_token = weights.sum(axis=1).reshape(num_heads, group, seq_len).sum(1)
        padded = np.zeros((num_heads, -(-seq_len // block_size) * block_size))
        padded[:, :seq_len] = per_token
        blocks = padded.reshape(num_heads, -1, block_size).sum(-1)
        mass[b, :, : blocks.shape[1]] = blocks
    return out, mass
