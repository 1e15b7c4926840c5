"""The public paged-attention API (`llmir.paged_attention` over a
`PagedKVCache`): dtypes of queries and outputs, `out=`, and every rejected
argument with its message.

The kernels' numerics are covered in test_attention_kernels.py (on pools
with NaN in every unowned slot); decode and prefill sequences through the
cache in test_attention_cache.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from llmir import PagedKVCache, paged_attention
from llmir.errors import (
    BlockTableError,
    ConfigError,
    DTypeError,
    LLMIRError,
    ShapeError,
)
from llmir.testing.reference import reference_paged_attention

HEAD_DIM = 32


@dataclass
class Pool:
    """A cache holding two sequences (20 and 9 tokens), and their table
    padded to 4 blocks."""

    cache: PagedKVCache
    block_table: np.ndarray
    seq_lens: np.ndarray


@pytest.fixture
def pool() -> Pool:
    rng = np.random.default_rng(1)
    cache = PagedKVCache(2, 2, HEAD_DIM, 8, 64, "f16", num_blocks=10)
    for seq, n in enumerate([20, 9]):
        k = rng.standard_normal((1, n, 2, HEAD_DIM), dtype=np.float32)
        cache.append_kv(k, k + 1, [seq], layer=0)
    table, lens = cache.block_table([0, 1])
    padded = np.full((2, 4), -1, np.int32)
    padded[:, : table.shape[1]] = table
    return Pool(cache, padded, lens)


def query(tq: int = 2, heads: int = 4, dtype: Any = np.float32) -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.standard_normal((2, tq, heads, HEAD_DIM)).astype(dtype)


def attend(pool: Pool, q: Any, **options: Any) -> np.ndarray:
    table = options.pop("block_table", pool.block_table)
    lens = options.pop("seq_lens", pool.seq_lens)
    return paged_attention(q, pool.cache, table, lens, **options)


def expected(pool: Pool, q: np.ndarray, **options: Any) -> np.ndarray:
    return reference_paged_attention(
        q,
        pool.cache.kv_pool[0],
        pool.cache.element_type,
        pool.block_table,
        pool.seq_lens,
        **options,
    )


def test_float32_query_gives_float32(pool: Pool):
    q = query()
    out = attend(pool, q)
    assert out.dtype == np.float32 and out.shape == q.shape
    np.testing.assert_allclose(out, expected(pool, q), rtol=1e-5, atol=1e-5)


def test_float16_query_gives_float16(pool: Pool):
    q = query(dtype=np.float16)
    out = attend(pool, q)
    assert out.dtype == np.float16 and out.shape == q.shape
    np.testing.assert_allclose(out, expected(pool, q), rtol=1e-3, atol=1e-3)


def test_options_reach_the_kernel(pool: Pool):
    q = query(tq=3)
    options = {
        "scale": 0.3,
        "causal": False,
        "sliding_window": 4,
        "logits_soft_cap": 1.5,
    }
    np.testing.assert_allclose(
        attend(pool, q, **options), expected(pool, q, **options), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_out_is_filled_and_returned(pool: Pool, dtype: Any):
    q = query(dtype=dtype)
    out = np.full(q.shape, np.nan, dtype=dtype)
    assert attend(pool, q, out=out) is out
    np.testing.assert_array_equal(out, attend(pool, q))


def test_non_contiguous_query_is_accepted(pool: Pool):
    q = np.asfortranarray(query())
    np.testing.assert_allclose(attend(pool, q), expected(pool, q), rtol=1e-5, atol=1e-5)


def test_empty_batch_and_zero_queries(pool: Pool):
    empty_table = np.zeros((0, 3), np.int32)
    out = attend(
        pool,
        np.zeros((0, 1, 4, HEAD_DIM), np.float32),
        block_table=empty_table,
        seq_lens=np.zeros(0, np.int32),
    )
    assert out.shape == (0, 1, 4, HEAD_DIM)
    assert attend(pool, query(tq=0)).shape == (2, 0, 4, HEAD_DIM)


# ---------------------------------------------------------------------------
# Rejected arguments: the error class and a message naming value and limit.

BAD_TABLE = np.array([[0, 1, 2, -1], [3, 99, -1, -1]], np.int32)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (
            {"q": query(dtype=np.float64)},
            DTypeError,
            "query dtype float64 is not supported",
        ),
        ({"q": query(dtype=np.int32)}, DTypeError, "query dtype int32"),
        ({"q": query()[0]}, ShapeError, r"query must be 4-D .* got shape \(2, 4, 32\)"),
        (
            {"q": query()[:1]},
            ShapeError,
            "query has batch 1 but seq_lens has 2 entries",
        ),
        (
            {"q": query()[..., :16]},
            ShapeError,
            "query head_dim 16 does not match the cache's 32",
        ),
        (
            {"q": query(heads=3)},
            ShapeError,
            "query has 3 heads, not a positive multiple of the cache's 2",
        ),
        ({"q": query(heads=0)}, ShapeError, "query has 0 heads"),
        (
            {"seq_lens": np.array([20, 33], np.int32)},
            BlockTableError,
            r"seq_lens\[1\] = 33 but block_table covers only 32 tokens "
            r"\(4 blocks of 8\)",
        ),
        (
            {"seq_lens": np.array([20, -1], np.int32)},
            BlockTableError,
            r"seq_lens\[1\] = -1 is negative",
        ),
        (
            {"block_table": BAD_TABLE, "seq_lens": np.array([20, 9], np.int32)},
            BlockTableError,
            r"block_table\[1, 1\] = 99 is out of range, the pool has \d+ blocks",
        ),
        (
            {"block_table": np.array([[0, 1, 2, -1], [3, -1, -1, -1]], np.int32)},
            BlockTableError,
            r"block_table\[1, 1\] = -1 is padding",
        ),
        (
            {"block_table": np.zeros((2, 4), np.float32)},
            DTypeError,
            "block_table must hold integers",
        ),
        ({"block_table": np.zeros(4, np.int32)}, ShapeError, "block_table must be 2-D"),
        (
            {"seq_lens": np.array([20], np.int32)},
            ShapeError,
            "block_table has 2 rows but seq_lens has 1",
        ),
        (
            {"scale": 0.0},
            ConfigError,
            "scale must be a finite positive number, got 0.0",
        ),
        (
            {"scale": float("nan")},
            ConfigError,
            "scale must be a finite positive number, got nan",
        ),
        (
            {"sliding_window": 0},
            ConfigError,
            r"sliding_window must be an integer in \[1, 2147483647\], got 0",
        ),
        (
            {"sliding_window": 2.5},
            ConfigError,
            "sliding_window must be an integer .* got 2.5",
        ),
        ({"sliding_window": True}, ConfigError, "got True"),
        ({"scale": "a"}, ConfigError, "scale must be a number, got 'a'"),
        ({"scale": 1e38}, ConfigError, "scale 1e.38 is outside the float32 range"),
        ({"scale": float("inf")}, ConfigError, "finite positive number, got inf"),
        ({"causal": 1}, ConfigError, "causal must be a bool, got 1"),
        (
            {"logits_soft_cap": float("inf")},
            ConfigError,
            "logits_soft_cap must be a finite positive number, got inf",
        ),
        ({"layer": 2}, ShapeError, "layer 2 is out of range, the cache has 2 layers"),
        ({"layer": True}, ShapeError, "layer True is out of range"),
        (
            {"logits_soft_cap": -1.0},
            ConfigError,
            "logits_soft_cap must be a finite positive number, got -1.0",
        ),
        (
            {"out": np.empty((2, 2, 4, 31), np.float32)},
            ShapeError,
            r"out has shape \(2, 2, 4, 31\), expected the query's \(2, 2, 4, 32\)",
        ),
        (
            {"out": np.empty((2, 2, 4, 32), np.float16)},
            DTypeError,
            "out has dtype float16, expected float32",
        ),
        (
            {"out": np.empty((2, 2, 4, 32), np.float32)[:, ::-1]},
            ShapeError,
            "out must be a writeable C-contiguous array",
        ),
    ],
)
def test_bad_arguments_are_rejected(
    pool: Pool, change: dict[str, Any], error: type[LLMIRError], message: str
):
    options = dict(change)
    q = options.pop("q", query())
    with pytest.raises(error, match=message):
        attend(pool, q, **options)


def test_out_may_not_overlap_the_query(pool: Pool):
    q = query()
    with pytest.raises(ShapeError, match="out overlaps the query"):
        attend(pool, q, out=q)


def test_rejected_call_leaves_out_untouched(pool: Pool):
    out = np.full((2, 2, 4, 32), 7.0, np.float32)
    with pytest.raises(ConfigError):
        attend(pool, query(), out=out, sliding_window=-3)
    assert (out == 7.0).all()
