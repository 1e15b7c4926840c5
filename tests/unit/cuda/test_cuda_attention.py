"""Paged attention kernels (decode, split-context decode, prefill) against the
float64 reference of `llmir.testing.reference`, and against the CPU kernel.
The launchers take validated tables and options, as `CUDABackend` passes
them; the argument checks themselves are tested on a CUDA cache
(test_cuda_device_cache.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cuda_helpers import KINDS, assert_close, to_device

from llmir.errors import ConfigError
from llmir.runtime import cuda as kvcuda
from llmir.runtime.cpu.attention_kernels import run_paged_attention
from llmir.runtime.dtypes import element_type
from llmir.runtime.validation import (
    BlockTable,
    check_attention_options,
    validate_block_table,
)
from llmir.testing.reference import (
    PagedPool,
    build_paged_pool,
    reference_block_mass,
    reference_paged_attention,
)

B = 4  # block size
D = 8  # head dim


def _pool(
    rng: np.random.Generator, kind_name: str, lens: list[int], kv_heads: int
) -> PagedPool:
    keys = [rng.standard_normal((n, kv_heads, D)).astype(np.float32) for n in lens]
    values = [rng.standard_normal((n, kv_heads, D)).astype(np.float32) for n in lens]
    return build_paged_pool(keys, values, B, element_type(kind_name), rng)


_LAUNCH = ("num_splits", "threads", "q_tile", "return_device")


def _table(paged: PagedPool) -> BlockTable:
    return validate_block_table(
        paged.block_table,
        paged.seq_lens,
        block_size=B,
        num_blocks=paged.kv_pool.shape[1],
        max_seq_len=paged.block_table.shape[1] * B,
    )


def _run(paged: PagedPool, query: Any, **kwargs: Any) -> Any:
    launch = {k: kwargs.pop(k) for k in _LAUNCH if k in kwargs}
    device_query = launch.pop("return_device", False)
    options = check_attention_options(D, **kwargs)
    q = to_device(query) if device_query else query
    return kvcuda.launch.attention(
        to_device(paged.kv_pool), paged.kind, 0, q, _table(paged), options, **launch
    )


def cpu_attention(paged: PagedPool, query: np.ndarray[Any, Any]) -> Any:
    out = np.empty(query.shape, np.float32)
    run_paged_attention(
        query.astype(np.float32),
        paged.kv_pool[0],
        paged.kind.code,
        paged.block_table,
        paged.seq_lens,
        out,
        scale=1.0 / np.sqrt(D),
    )
    return out


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
    cpu = cpu_attention(paged, query)
    assert_close(_run(paged, query), cpu, paged.kind)


def test_split_only_in_decode(rng: np.random.Generator) -> None:
    paged = _pool(rng, "f32", [6, 3], kv_heads=2)
    with pytest.raises(ConfigError, match="num_splits 2 is invalid"):
        _run(paged, np.zeros((2, 2, 4, D), np.float32), num_splits=2)


def test_device_query_gives_a_device_result(rng: np.random.Generator) -> None:
    paged = _pool(rng, "f16", [9, 4], kv_heads=2)
    query = rng.standard_normal((2, 1, 4, D)).astype(np.float32)
    got = _run(paged, query, return_device=True)
    assert kvcuda.launch.is_device_array(got) and got.dtype == np.float32
    assert_close(got.copy_to_host(), _reference(paged, query), paged.kind)


def test_split_heuristic_fills_the_device_only_when_needed() -> None:
    sms = kvcuda.launch.sm_count()
    # Few (sequence, kv head) pairs and a long context: split.
    assert kvcuda.launch.choose_splits(1, 1, 64 * sms) == 2 * sms
    # Splits never shorter than 16 blocks.
    assert kvcuda.launch.choose_splits(1, 1, 32) == 2
    # Enough thread blocks already: no split.
    assert kvcuda.launch.choose_splits(2 * sms, 1, 10_000) == 1


@pytest.mark.parametrize(
    ("num_splits", "tq", "q_heads"),
    [(1, 1, 2), (3, 1, 2), (1, 3, 4)],  # split launches are decode only
)
def test_sinks_match_reference_and_holes_are_never_read(
    num_splits: int, tq: int, q_heads: int, rng: np.random.Generator
) -> None:
    paged = _pool(rng, "f32", [29, 6], kv_heads=2)
    query = rng.standard_normal((2, tq, q_heads, D)).astype(np.float32)
    options = {"sliding_window": 6, "sink_tokens": 3}
    got = _run(paged, query, num_splits=num_splits, **options)
    assert_close(got, _reference(paged, query, **options), paged.kind)
    # Blocks wholly between the sinks and the first query's window are
    # never read: point them at a poisoned (NaN) spare block.
    poisoned = paged.block_table.copy()
    spare = int(np.setdiff1d(np.arange(paged.kv_pool.shape[1]), poisoned)[0])
    first_read = 29 - tq - 6 + 1
    holes = [j for j in range(1, 8) if (j + 1) * B <= first_read]
    assert holes
    poisoned[0, holes] = spare
    again = _run(
        PagedPool(paged.kv_pool, poisoned, paged.seq_lens, paged.kind),
        query,
        num_splits=num_splits,
        **options,
    )
    np.testing.assert_array_equal(again, got)


@pytest.mark.parametrize(("tq", "q_heads"), [(1, 2), (1, 4), (3, 4)])
def test_block_mass_matches_reference_with_holes(
    tq: int, q_heads: int, rng: np.random.Generator
) -> None:
    """Heavy-hitter pruning's extra output: each block's attention mass, with
    holes (-1) anywhere masked out; the same figures as the CPU kernel."""
    paged = _pool(rng, "f32", [29, 6], kv_heads=2)
    table = paged.block_table.copy()
    table[0, [2, 4]] = -1
    holed = PagedPool(paged.kv_pool, table, paged.seq_lens, paged.kind)
    query = rng.standard_normal((2, tq, q_heads, D)).astype(np.float32)
    mass = np.full((2, 2, table.shape[1]), np.nan, np.float32)
    options = check_attention_options(D)
    # A heavy-hitter cache's table: holes where its blocks went back.
    checked = BlockTable(table, holed.seq_lens, int(holed.seq_lens.max()))
    got = kvcuda.launch.attention(
        to_device(holed.kv_pool), holed.kind, 0, query, checked, options,
        block_mass=mass,
    )  # fmt: skip
    assert_close(got, _reference(holed, query), holed.kind)
    want = reference_block_mass(
        query, holed.kv_pool[0], holed.kind, table, holed.seq_lens
    )
    np.testing.assert_allclose(mass, want, rtol=1e-4, atol=1e-5)
    cpu_mass = np.zeros_like(mass)
    run_paged_attention(
        query, holed.kv_pool[0], holed.kind.code, table, holed.seq_lens,
        np.empty(query.shape, np.float32), scale=1.0 / np.sqrt(D),
        block_mass=cpu_mass,
    )  # fmt: skip
    np.testing.assert_allclose(mass, cpu_mass, rtol=1e-4, atol=1e-6)
