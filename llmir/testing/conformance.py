"""A fixed trace of every `KVCache` operation, for checking that two
implementations (the CPU and CUDA backends of `PagedKVCache`, or a paged
cache and the dense reference) agree.

    results = protocol_trace(cache, np.random.default_rng(0))

The cache must be empty, with 2 layers, 2 kv heads, head_dim 8, block size
4, max_seq_len >= 24 and at least 16 blocks.  The trace appends per layer
and whole steps, reads tables, looks up in both element forms, attends
(decode, prefill, GQA, window, soft cap), frees a sequence and reuses its
blocks, and returns every float output by name.  Block ids are left out:
implementations may number blocks differently.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.runtime.protocol import KVCache

Array = npt.NDArray[Any]

LAYERS, HEADS, HEAD_DIM, BLOCK = 2, 2, 8, 4


def protocol_trace(cache: KVCache, rng: np.random.Generator) -> dict[str, Any]:
    g = cache.geometry
    if (g.num_layers, g.num_heads, g.head_dim, g.block_size) != (
        LAYERS,
        HEADS,
        HEAD_DIM,
        BLOCK,
    ):
        raise ValueError(f"protocol_trace needs a 2x2x8 cache of block 4, got {g}")

    def kv(*shape: int) -> Array:
        return rng.standard_normal((*shape, HEADS, HEAD_DIM), dtype=np.float32)

    out: dict[str, Any] = {}
    # Prefill two sequences on every layer at once, a third per layer.
    prompt = kv(LAYERS, 2, 7)
    cache.append_kv_all_layers(prompt, prompt + 1, [10, 11])
    solo = kv(1, 5)
    for layer in range(LAYERS):
        cache.append_kv(solo + layer, solo - layer, [12], layer=layer)
    out["lens"] = [cache.seq_len(s) for s in (10, 11, 12)]
    # Decode steps, layer by layer, with attention reading each layer.
    ids = [10, 11, 12]
    for step in range(3):
        x = kv(3, 1)
        for layer in range(LAYERS):
            cache.append_kv(x, x * 0.5, ids, layer=layer)
            table, lens = cache.block_table(ids)
            q = rng.standard_normal((3, 1, 2 * HEADS, HEAD_DIM), dtype=np.float32)
            out[f"decode{step}.{layer}"] = np.asarray(
                cache.paged_attention(q, table, lens, layer)
            )
    table, lens = cache.block_table(ids)
    out["block_table_width"] = table.shape[1]
    out["seq_lens"] = lens.tolist()
    # Lookups: the stored values, in both forms.
    for as_float32 in (False, True):
        keys, values = cache.lookup_kv(table, lens, 1, as_float32=as_float32)
        out[f"lookup{int(as_float32)}"] = (np.asarray(keys), np.asarray(values))
    # Prefill-style attention with every option.
    q = rng.standard_normal((3, 4, 2 * HEADS, HEAD_DIM), dtype=np.float32)
    out["prefill"] = np.asarray(cache.paged_attention(q, table, lens, 0))
    out["options"] = np.asarray(
        cache.paged_attention(
            q,
            table,
            lens,
            1,
            scale=0.3,
            causal=False,
            sliding_window=5,
            logits_soft_cap=2.0,
        )
    )
    # Free one sequence, start another in its blocks, attend again.
    stats_before = cache.stats()
    cache.free_sequences([11])
    out["freed"] = 11 not in cache and 10 in cache
    late = kv(LAYERS, 1, 6)
    cache.append_kv_all_layers(late, late, [13])
    table, lens = cache.block_table([10, 13])
    q = rng.standard_normal((2, 1, HEADS, HEAD_DIM), dtype=np.float32)
    out["after_free"] = np.asarray(cache.paged_attention(q, table, lens, 1))
    out["tokens"] = (stats_before.tokens_stored, cache.stats().tokens_stored)
    cache.reset()
    out["reset"] = cache.stats().num_sequences == 0 and 10 not in cache
    return out
