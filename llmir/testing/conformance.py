"""Fixed traces of every `KVCache` operation, for checking that two
implementations (the CPU and CUDA backends of `PagedKVCache`, or a paged
cache and the dense reference) agree.

    results = protocol_trace(cache, np.random.default_rng(0))
    results = sharing_trace(cache)      # a cache with prefix caching on

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
from llmir.testing.prefix_data import prefix_kv

Array = npt.NDArray[Any]

LAYERS, HEADS, HEAD_DIM, BLOCK = 2, 2, 8, 4


def _check_geometry(cache: KVCache, trace: str) -> None:
    g = cache.geometry
    if (g.num_layers, g.num_heads, g.head_dim, g.block_size) != (
        LAYERS,
        HEADS,
        HEAD_DIM,
        BLOCK,
    ):
        raise ValueError(f"{trace} needs a 2x2x8 cache of block 4, got {g}")


def protocol_trace(cache: KVCache, rng: np.random.Generator) -> dict[str, Any]:
    _check_geometry(cache, "protocol_trace")

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


def sharing_trace(cache: KVCache) -> dict[str, Any]:
    """Forks with copy-on-write and prefix matches (whole blocks, a partial
    block, blocks of a freed sequence), on the geometry of `protocol_trace`
    with prefix caching on and at least 24 blocks of room.  Keys and values
    are `prefix_kv` of the tokens; returns every float output and every
    match length by name."""
    _check_geometry(cache, "sharing_trace")
    rng = np.random.default_rng(11)
    tokens: dict[int, list[int]] = {}

    def append(seq_ids: list[int], new: list[list[int]]) -> None:
        t = len(new[0])
        keys = np.empty((LAYERS, len(seq_ids), t, HEADS, HEAD_DIM), np.float32)
        values = np.empty_like(keys)
        for b, seq in enumerate(seq_ids):
            history = tokens.setdefault(seq, []) + new[b]
            keys[:, b], values[:, b] = prefix_kv(
                history, LAYERS, HEADS, HEAD_DIM, len(history) - t
            )
            tokens[seq] = history
        cache.append_kv_all_layers(keys, values, seq_ids, token_ids=new)

    def attend(seq_ids: list[int], name: str) -> None:
        table, lens = cache.block_table(seq_ids)
        q = rng.standard_normal((len(seq_ids), 2, 2 * HEADS, HEAD_DIM), np.float32)
        out[name] = np.asarray(cache.paged_attention(q, table, lens, 1))
        out[name + ".lookup"] = np.asarray(cache.lookup_kv(table, lens, 0)[0])

    out: dict[str, Any] = {}
    prompt = [5, 1, 4, 1, 5, 9, 2, 6, 5, 3]  # 2.5 blocks
    append([0], [prompt])
    # Fork twice from the half-full last block, then decode all three: the
    # first two writers copy the shared block, the last writes it in place.
    cache.fork_sequences([0, 0], [1, 2])
    for seq in (1, 2):
        tokens[seq] = list(tokens[0])
    append([0, 1, 2], [[7], [8], [9]])
    attend([0, 1, 2], "forked")
    append([0], [[4]])  # sequence 0's third block is full now: indexed
    # A new prompt: two whole blocks of sequence 0, then 2 tokens of its
    # third block (partial reuse); the rest is computed.
    query = [5, 1, 4, 1, 5, 9, 2, 6, 5, 3, 8, 8, 8, 1]
    matched = cache.match_prefixes([3], [query])
    out["match.partial"] = matched.tolist()
    tokens[3] = query[: int(matched[0])]
    append([3], [query[int(matched[0]) :]])
    attend([3, 0], "matched")
    # Freed sequences stay matchable; padding ends the shorter prompt.
    cache.free_sequences([0, 3])
    batch = np.full((2, 16), -1, np.int64)
    batch[0, :14] = query
    batch[1, :6] = prompt[:6]
    matched = cache.match_prefixes([4, 5], batch)
    out["match.freed"] = matched.tolist()
    tokens[4] = query[: int(matched[0])]
    tokens[5] = prompt[: int(matched[1])]
    append([4, 5], [query[int(matched[0]) :][:1], prompt[int(matched[1]) : 6][:1]])
    attend([4, 5, 1], "revived")
    stats = cache.stats()
    out["prefix"] = (stats.prefix_queries, stats.prefix_query_tokens)
    out["hits"] = stats.prefix_hit_tokens
    return out
