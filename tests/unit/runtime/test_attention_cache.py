"""`paged_attention` through a real `PagedKVCache`: decode steps, chunked
prefill, several layers, and the cache-level checks (layer, max_seq_len)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llmir.errors import BlockTableError, ShapeError
from llmir.runtime.attention import paged_attention
from llmir.runtime.dtypes import FLOAT_TYPES
from llmir.runtime.kv_cache import PagedKVCache
from llmir.testing import DenseReferenceCache, reference_paged_attention

HEADS, HEAD_DIM, BLOCK = 2, 32, 8


def tolerance(kind_name: str) -> dict[str, float]:
    return (
        {"rtol": 1e-5, "atol": 1e-5}
        if kind_name == "f32"
        else {"rtol": 1e-3, "atol": 1e-3}
    )


def new_cache(kind_name: str, num_layers: int = 2) -> PagedKVCache:
    return PagedKVCache(
        num_layers,
        HEADS,
        HEAD_DIM,
        BLOCK,
        max_seq_len=64,
        dtype=kind_name,
        num_blocks=40,
    )


def kv(rng: np.random.Generator, batch: int, tokens: int) -> np.ndarray:
    return rng.standard_normal((batch, tokens, HEADS, HEAD_DIM)).astype(np.float32)


def expected(cache: PagedKVCache, q: np.ndarray, table: Any, lens: Any, layer: int = 0):
    return reference_paged_attention(
        q, cache.kv_pool[layer], cache.element_type, table, lens
    )


@pytest.mark.parametrize("kind_name", list(FLOAT_TYPES))
def test_decode_steps_after_prefill(kind_name: str):
    rng = np.random.default_rng(21)
    cache = new_cache(kind_name)
    # Sequences of different prompt lengths, then decode steps for all.
    for seq_id, prompt in ((7, 13), (3, 8), (11, 1)):
        for layer in range(2):
            cache.append_kv(kv(rng, 1, prompt), kv(rng, 1, prompt), [seq_id], layer)
    seq_ids = [7, 3, 11]
    for _ in range(10):
        for layer in range(2):
            cache.append_kv(kv(rng, 3, 1), kv(rng, 3, 1), seq_ids, layer)
        table, lens = cache.block_table(seq_ids)
        q = rng.standard_normal((3, 1, 4, HEAD_DIM)).astype(np.float32)
        for layer in range(2):
            out = paged_attention(q, cache, table, lens, layer=layer)
            np.testing.assert_allclose(
                out, expected(cache, q, table, lens, layer), **tolerance(kind_name)
            )


@pytest.mark.parametrize("kind_name", list(FLOAT_TYPES))
def test_chunked_prefill_equals_prefill_at_once(kind_name: str):
    rng = np.random.default_rng(22)
    length, q_heads = 29, 8
    keys, values = kv(rng, 1, length), kv(rng, 1, length)
    q = rng.standard_normal((1, length, q_heads, HEAD_DIM)).astype(np.float32)

    whole = new_cache(kind_name, num_layers=1)
    whole.append_kv(keys, values, [0])
    table, lens = whole.block_table([0])
    at_once = paged_attention(q, whole, table, lens)
    np.testing.assert_allclose(
        at_once, expected(whole, q, table, lens), **tolerance(kind_name)
    )

    chunked = new_cache(kind_name, num_layers=1)
    for lo, hi in ((0, 5), (5, 8), (8, 20), (20, 29)):
        chunked.append_kv(keys[:, lo:hi], values[:, lo:hi], [0])
        table, lens = chunked.block_table([0])
        out = paged_attention(np.ascontiguousarray(q[:, lo:hi]), chunked, table, lens)
        np.testing.assert_allclose(out, at_once[:, lo:hi], rtol=1e-6, atol=1e-6)


def test_float16_query_on_f16_cache_gives_float16():
    rng = np.random.default_rng(23)
    cache = new_cache("f16", num_layers=1)
    cache.append_kv(kv(rng, 2, 17), kv(rng, 2, 17), [1, 2])
    table, lens = cache.block_table([1, 2])
    q = rng.standard_normal((2, 1, 2, HEAD_DIM)).astype(np.float16)
    out = paged_attention(q, cache, table, lens)
    assert out.dtype == np.float16
    np.testing.assert_allclose(
        out, expected(cache, q, table, lens), rtol=1e-3, atol=1e-3
    )


def test_layer_out_of_range_is_rejected():
    cache = new_cache("f32")
    cache.append_kv(np.zeros((1, 3, HEADS, HEAD_DIM), np.float32),
                    np.zeros((1, 3, HEADS, HEAD_DIM), np.float32), [0])  # fmt: skip
    table, lens = cache.block_table([0])
    q = np.zeros((1, 1, HEADS, HEAD_DIM), np.float32)
    for layer in (2, -1):
        with pytest.raises(
            ShapeError, match=f"layer {layer} is out of range, the cache has 2"
        ):
            paged_attention(q, cache, table, lens, layer=layer)


def test_any_kv_cache_serves_the_free_function():
    """`paged_attention` asks the cache itself: the dense reference works
    through the same call."""
    rng = np.random.default_rng(4)
    paged = new_cache("f32")
    dense = DenseReferenceCache.from_geometry(paged.geometry, paged.num_blocks)
    keys = rng.standard_normal((2, 9, HEADS, HEAD_DIM), dtype=np.float32)
    q = rng.standard_normal((2, 1, 2 * HEADS, HEAD_DIM), dtype=np.float32)
    outs = []
    for cache in (paged, dense):
        cache.append_kv(keys, keys, [0, 1])
        table, lens = cache.block_table([0, 1])
        outs.append(paged_attention(q, cache, table, lens))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_cache_limits_apply_to_the_table():
    cache = new_cache("f32")
    q = np.zeros((1, 1, HEADS, HEAD_DIM), np.float32)
    table = np.arange(9, dtype=np.int32)[None]
    with pytest.raises(
        BlockTableError, match=r"seq_lens\[0\] = 65 exceeds max_seq_len 64"
    ):
        paged_attention(q, cache, table, np.array([65], np.int32))
    with pytest.raises(
        BlockTableError, match=r"block_table\[0, 0\] = 40 is out of range"
    ):
        paged_attention(q, cache, table + 40, np.array([3], np.int32))
