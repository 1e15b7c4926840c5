"""Paged attention kernels (decode, split-context decode, prefill) against the
float64 reference of `llmir.runtime.reference`, and against the CPU kernel."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cuda_helpers import KINDS, assert_close, to_device

from llmir.errors import BlockTableError, ConfigError, DTypeError, ShapeError
from llmir.runtime import cuda as kvcuda
from llmir.runtime.attention import paged_attention_on_pool as cpu_attention
from llmir.runtime.dtypes import storage_kind
from llmir.runtime.reference import (
    PagedPool,
    build_paged_pool,
    reference_paged_attention,
)

B = 4  # block size
D = 8  # head dim


def _pool(
    rng: np.random.Generator, kind_name: str, lens: list[int], kv_heads: int
) -> PagedPool:
    keys = [rng.standard_normal((n, kv_heads, D)).astype(np.float32) for n in lens]
    values = [rng.standard_normal((n, kv_heads, D)).astype(np.float32) for n in lens]
    return build_paged_pool(keys, values, B, storage_kind(kind_name), rng)


def _run(
    paged: PagedPool, query: np.ndarray[Any, Any], **kwargs: Any
) -> np.ndarray[Any, Any]:
    return kvcuda.paged_attention_on_pool(
        to_device(paged.kv_pool),
        paged.kind,
        0,
        query,
        paged.block_table,
        paged.seq_lens,
        **kwargs,
    )


def _reference(paged: PagedPool, query: np.ndarray[Any, Any], **kwargs: Any) -> Any:
    return reference_paged_attention(
        query, paged.kv_pool[0], paged.kind, paged.block_table, paged.seq_lens, **kwargs
    )


@pytest.mark.parametrize("kind_name", KINDS)
@pytest.mark.parametrize(("q_heads", "kv_heads"), [(2, 2), (4, 2), (2, 1)])
def test_decode_matches_reference(
    kind_name: str, q_heads: int, kv_heads: int, rng: np.random.Generator
) -> None:
    paged = _pool(rng, kind_name, [13, 5], kv_heads)
    query = rng.standard_normal((2, 1, q_heads, D)).astype(np.float32)
    got = _run(paged, query, num_splits=1)
    assert got.shape == query.shape and got.dtype == np.float32
    assert_close(got, _reference(paged, query), paged.kind)


@pytest.mark.parametrize("kind_name", ["f32", "bf16"])
@pytest.mark.parametrize("num_splits", [2, 3])
def test_split_context_decode_matches_reference(
    kind_name: str, num_splits: int, rng: np.random.Generator
) -> None:
    # Sequence 1 is short: some of its splits see no key and must merge away.
    paged = _pool(rng, kind_name, [23, 3], kv_heads=1)
    query = rng.standard_normal((2, 1, 2, D)).astype(np.float32)
    got = _run(paged, query, num_splits=num_splits)
    assert_close(got, _reference(paged, query), paged.kind)


@pytest.mark.parametrize("kind_name", KINDS)
def test_prefill_is_causal_and_matches_reference(
    kind_name: str, rng: np.random.Generator
) -> None:
    # Tq = 5 new tokens on prefixes of 6 and 0 tokens; q_tile 2 splits the
    # queries over several thread blocks, one of them partly padding.
    paged = _pool(rng, kind_name, [11, 5], kv_heads=1)
    query = rng.standard_normal((2, 5, 2, D)).astype(np.float32)
    got = _run(paged, query, q_tile=2)
    assert_close(got, _reference(paged, query), paged.kind)
    # Causality: the first query of sequence 1 sees only key 0, i.e. v[0].
    first = _reference(paged, query)[1, 0]
    assert_close(got[1, 0], first, paged.kind)


def test_prefill_options_match_reference(rng: np.random.Generator) -> None:
    paged = _pool(rng, "f32", [10, 7], kv_heads=1)
    query = rng.standard_normal((2, 3, 2, D)).astype(np.float32)
    for options in (
        {"causal": False},
        {"sliding_window": 3},
        {"logits_soft_cap": 0.5, "scale": 2.0},
    ):
        assert_close(
            _run(paged, query, **options),
            _reference(paged, query, **options),
            paged.kind,
        )


def test_empty_sequences_and_padding_queries_give_zeros(
    rng: np.random.Generator,
) -> None:
    paged = _pool(rng, "f32", [0, 2], kv_heads=1)
    query = rng.standard_normal((2, 3, 1, D)).astype(np.float32)
    got = _run(paged, query)
    assert not got[0].any()
    assert not got[1, 0].any(), "query at position -1 sees no key"
    assert_close(got, _reference(paged, query), paged.kind)


def test_float16_query_gives_float16_output(rng: np.random.Generator) -> None:
    paged = _pool(rng, "f16", [6], kv_heads=1)
    query = rng.standard_normal((1, 1, 1, D)).astype(np.float16)
    got = _run(paged, query)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, _reference(paged, query), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind_name", KINDS)
def test_agrees_with_cpu_kernel(kind_name: str, rng: np.random.Generator) -> None:
    paged = _pool(rng, kind_name, [9, 4], kv_heads=2)
    query = rng.standard_normal((2, 2, 4, D)).astype(np.float32)
    cpu = cpu_attention(
        query, paged.kv_pool[0], paged.kind, paged.block_table, paged.seq_lens
    )
    assert_close(_run(paged, query), cpu, paged.kind)


def test_bad_inputs_are_rejected_before_launch(rng: np.random.Generator) -> None:
    paged = _pool(rng, "f32", [6, 3], kv_heads=2)
    pool = to_device(paged.kv_pool)
    query = rng.standard_normal((2, 1, 4, D)).astype(np.float32)
    num_blocks = paged.kv_pool.shape[1]

    def run(
        q: Any = query,
        table: Any = paged.block_table,
        lens: Any = paged.seq_lens,
        **kw: Any,
    ) -> Any:
        return kvcuda.paged_attention_on_pool(pool, paged.kind, 0, q, table, lens, **kw)

    bad = paged.block_table.copy()
    bad[1, 0] = num_blocks
    with pytest.raises(
        BlockTableError, match=rf"block_table\[1, 0\] = {num_blocks} is out of range"
    ):
        run(table=bad)
    bad[1, 0] = -1
    with pytest.raises(BlockTableError, match=r"block_table\[1, 0\] = -1 is padding"):
        run(table=bad)
    with pytest.raises(BlockTableError, match=r"seq_lens\[1\] = 100 exceeds"):
        run(lens=np.array([6, 100]))
    with pytest.raises(ShapeError, match="not a positive multiple"):
        run(q=rng.standard_normal((2, 1, 3, D)).astype(np.float32))
    with pytest.raises(ShapeError, match="head_dim"):
        run(q=rng.standard_normal((2, 1, 4, D + 1)).astype(np.float32))
    with pytest.raises(DTypeError, match="float64"):
        run(q=query.astype(np.float64))
    with pytest.raises(ConfigError, match="num_splits 2 is invalid"):
        run(q=np.zeros((2, 2, 4, D), np.float32), num_splits=2)
    with pytest.raises(ConfigError, match="sliding_window"):
        run(sliding_window=0)


def test_split_heuristic_fills_the_device_only_when_needed() -> None:
    sms = kvcuda.sm_count()
    # Few (sequence, kv head) pairs and a long context: split.
    assert kvcuda.choose_splits(1, 1, 64 * sms) == 2 * sms
    # Splits never shorter than 16 blocks.
    assert kvcuda.choose_splits(1, 1, 32) == 2
    # Enough thread blocks already: no split.
    assert kvcuda.choose_splits(2 * sms, 1, 10_000) == 1
