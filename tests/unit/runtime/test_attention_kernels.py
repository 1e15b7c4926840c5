"""The paged-attention kernels against the float64 numpy reference, on pools
built directly in the layout (no cache involved).

The issue's matrix (batch 1-5, Tq 1-7, Hq/H in 1/1 4/4 8/2 8/1, D 32/64/128,
block sizes 1/8/16/64, lengths that do and do not fill the last block, every
storage kind) is sampled rather than crossed: 48 seeded cases, each with
its own random lengths, plus targeted cases for the edges.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from llmir.runtime.cpu.attention_kernels import (
    plan_partition_size,
    run_paged_attention,
)
from llmir.runtime.cpu.simd import exp_nonpositive
from llmir.runtime.dtypes import FLOAT_TYPES, ElementType, element_type
from llmir.testing.reference import (
    PagedPool,
    build_paged_pool,
    reference_paged_attention,
)

F32_TOL = {"rtol": 1e-5, "atol": 1e-5}
HALF_TOL = {"rtol": 1e-3, "atol": 1e-3}
HEADS = [(1, 1), (4, 4), (8, 2), (8, 1)]
BLOCK_SIZES = [1, 8, 16, 64]


def tolerance(kind: ElementType) -> dict[str, float]:
    """f32: 1e-5 abs and rel.  Halves: 1e-3 abs and rel against the reference
    computed from the stored (already rounded) values, so only the kernel's
    float32 arithmetic is measured."""
    return HALF_TOL if kind.is_half else F32_TOL


def make_pool(
    rng: np.random.Generator,
    lens: list[int],
    num_heads: int,
    head_dim: int,
    block_size: int,
    kind: ElementType,
    spread: float = 1.0,
) -> PagedPool:
    keys = [rng.standard_normal((n, num_heads, head_dim)) * spread for n in lens]
    values = [rng.standard_normal((n, num_heads, head_dim)) for n in lens]
    return build_paged_pool(keys, values, block_size, kind, rng)


def run(
    query: npt.NDArray[np.float32], pool: PagedPool, **options: Any
) -> npt.NDArray[np.float32]:
    out = np.full(
        query.shape, np.nan, dtype=np.float32
    )  # every element must be written
    kernel_options = {
        k: options.pop(k)
        for k in ("partition_size", "q_tile", "auto_partition")
        if k in options
    }
    run_paged_attention(
        np.ascontiguousarray(query, dtype=np.float32),
        pool.kv_pool[0],
        pool.kind.code,
        pool.block_table,
        pool.seq_lens,
        out,
        scale=options.pop("scale", query.shape[-1] ** -0.5),
        **options,
        **kernel_options,
    )
    return out


def reference(query: npt.NDArray[np.float32], pool: PagedPool, **options: Any):
    return reference_paged_attention(
        query, pool.kv_pool[0], pool.kind, pool.block_table, pool.seq_lens, **options
    )


def sampled_cases(count: int) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(20261127)
    cases: list[tuple[Any, ...]] = []
    for i in range(count):
        q_heads, kv_heads = HEADS[i % len(HEADS)]
        kind = list(FLOAT_TYPES)[(i // len(HEADS)) % 3]
        block_size = BLOCK_SIZES[(i // 3) % len(BLOCK_SIZES)]
        head_dim = [32, 64, 128][int(rng.integers(3))]
        batch = int(rng.integers(1, 6))
        tq = int(rng.integers(1, 8))
        # Half the cases fill their last block exactly, half do not.
        fill = i % 2 == 0
        lens = []
        for _ in range(batch):
            blocks = int(rng.integers(1, max(2, 96 // block_size) + 1))
            n = blocks * block_size - (
                0 if fill else int(rng.integers(1, block_size + 1))
            )
            lens.append(n)
        cases.append((kind, block_size, q_heads, kv_heads, head_dim, tq, lens))
    return cases


@pytest.mark.parametrize(
    "kind_name, block_size, q_heads, kv_heads, head_dim, tq, lens", sampled_cases(48)
)
def test_matches_reference(
    kind_name: str,
    block_size: int,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    tq: int,
    lens: list[int],
):
    kind = element_type(kind_name)
    rng = np.random.default_rng(sum(lens) + tq)
    pool = make_pool(rng, lens, kv_heads, head_dim, block_size, kind)
    query = rng.standard_normal((len(lens), tq, q_heads, head_dim)).astype(np.float32)
    np.testing.assert_allclose(
        run(query, pool), reference(query, pool), **tolerance(kind)
    )


@pytest.mark.parametrize("kind_name", list(FLOAT_TYPES))
@pytest.mark.parametrize("causal", [True, False])
def test_sliding_window_and_soft_cap(kind_name: str, causal: bool):
    kind = element_type(kind_name)
    rng = np.random.default_rng(5)
    pool = make_pool(rng, [37, 5, 64, 0], 2, 32, 8, kind, spread=4.0)
    # GQA prefill (several rows per item) and MHA decode (one row per item,
    # the direct-from-pool path).
    for tq, q_heads in ((6, 4), (1, 2)):
        query = rng.standard_normal((4, tq, q_heads, 32)).astype(np.float32)
        for window, cap in [(1, None), (7, None), (100, None), (None, 5.0), (9, 2.5)]:
            options = {
                "causal": causal,
                "sliding_window": window,
                "logits_soft_cap": cap,
            }
            np.testing.assert_allclose(
                run(query, pool, **options),
                reference(query, pool, **options),
                **tolerance(kind),
                err_msg=f"tq={tq}, window={window}, cap={cap}",
            )


@pytest.mark.parametrize("kind_name", list(FLOAT_TYPES))
def test_large_logits_stay_finite(kind_name: str):
    # Logits of exactly +-1e4: every key is +u or -u and the query is c*u, so
    # the +u keys tie and the output is the mean of their values.
    kind = element_type(kind_name)
    rng = np.random.default_rng(9)
    head_dim, length = 32, 40
    u = np.zeros(head_dim)
    u[:4] = 1.0
    signs = np.where(rng.random(length) < 0.3, 1.0, -1.0)
    signs[3] = 1.0
    keys = (signs[:, None] * u)[:, None, :]
    values = rng.standard_normal((length, 1, head_dim))
    pool = build_paged_pool([keys], [values], 16, kind, rng)
    for logit in (1e4, -1e4):
        query = (u * logit / 4).astype(np.float32).reshape(1, 1, 1, head_dim)
        out = run(query, pool, scale=1.0, causal=False)
        assert np.isfinite(out).all()
        winners = signs > 0 if logit > 0 else signs < 0
        stored_values = reference(query, pool, scale=1.0, causal=False)
        np.testing.assert_allclose(out, stored_values, **tolerance(kind))
        if kind.name == "f32":
            np.testing.assert_allclose(
                out[0, 0, 0], values[winners, 0].mean(axis=0), rtol=1e-5, atol=1e-5
            )


@pytest.mark.parametrize("kind_name", list(FLOAT_TYPES))
def test_empty_sequences_give_zeros(kind_name: str):
    kind = element_type(kind_name)
    rng = np.random.default_rng(3)
    pool = make_pool(rng, [0, 20, 0], 2, 32, 8, kind)
    query = rng.standard_normal((3, 3, 4, 32)).astype(np.float32)
    for causal in (True, False):
        out = run(query, pool, causal=causal)
        assert not np.isnan(out).any()
        assert (out[0] == 0).all() and (out[2] == 0).all()
        np.testing.assert_allclose(
            out, reference(query, pool, causal=causal), **F32_TOL
        )


def test_padding_queries_of_short_sequences_give_zeros():
    # Tq = 5 but the sequence holds 2 tokens: queries 0..2 sit at negative
    # positions and, causally, see nothing.
    rng = np.random.default_rng(4)
    pool = make_pool(rng, [2], 1, 32, 8, element_type("f32"))
    query = rng.standard_normal((1, 5, 1, 32)).astype(np.float32)
    out = run(query, pool)
    assert (out[0, :3] == 0).all()
    assert (out[0, 3:] != 0).any()
    np.testing.assert_allclose(out, reference(query, pool), **F32_TOL)


@pytest.mark.parametrize("kind_name", list(FLOAT_TYPES))
@pytest.mark.parametrize(
    "q_heads, kv_heads, block_size", [(8, 2, 16), (4, 1, 8), (2, 2, 64)]
)
def test_split_context_decode_equals_unsplit(
    kind_name: str, q_heads: int, kv_heads: int, block_size: int
):
    kind = element_type(kind_name)
    rng = np.random.default_rng(11)
    lens = [700, 129, 0, 1, 512]
    pool = make_pool(rng, lens, kv_heads, 32, block_size, kind)
    query = rng.standard_normal((len(lens), 1, q_heads, 32)).astype(np.float32)
    whole = run(query, pool, auto_partition=False)
    for partition in (block_size, 2 * block_size, 128):
        split = run(query, pool, partition_size=partition)
        np.testing.assert_allclose(
            split, whole, **F32_TOL, err_msg=f"partition {partition}"
        )
    np.testing.assert_allclose(whole, reference(query, pool), **tolerance(kind))


def test_split_context_with_window_and_prefill():
    # Partitions entirely outside a window or beyond a causal horizon hold no
    # keys: the merge must skip their empty (-inf, 0) states.
    rng = np.random.default_rng(12)
    pool = make_pool(rng, [300, 45], 2, 32, 16, element_type("f32"))
    query = rng.standard_normal((2, 4, 4, 32)).astype(np.float32)
    options = {"sliding_window": 40}
    split = run(query, pool, partition_size=32, q_tile=3, **options)
    np.testing.assert_allclose(split, reference(query, pool, **options), **F32_TOL)


@pytest.mark.parametrize("kind_name", list(FLOAT_TYPES))
def test_chunked_prefill_equals_prefill_at_once(kind_name: str):
    # The chunk ending at token e sees the table with seq_len e: the same
    # state a cache has after appending the chunk.
    kind = element_type(kind_name)
    rng = np.random.default_rng(13)
    length = 61
    pool = make_pool(rng, [length], 2, 64, 8, kind)
    query = rng.standard_normal((1, length, 4, 64)).astype(np.float32)
    at_once = run(query, pool)
    bounds = [0, 1, 9, 16, 40, 61]
    for lo, hi in itertools.pairwise(bounds):
        chunk_pool = PagedPool(
            pool.kv_pool, pool.block_table, np.array([hi], np.int32), pool.kind
        )
        chunk = run(np.ascontiguousarray(query[:, lo:hi]), chunk_pool)
        np.testing.assert_allclose(
            chunk, at_once[:, lo:hi], **F32_TOL, err_msg=f"{lo}:{hi}"
        )
    np.testing.assert_allclose(at_once, reference(query, pool), **tolerance(kind))


@pytest.mark.parametrize("q_tile", [1, 3, 16])
def test_query_tiling_does_not_change_results(q_tile: int):
    rng = np.random.default_rng(14)
    pool = make_pool(rng, [50, 7], 2, 32, 16, element_type("bf16"))
    query = rng.standard_normal((2, 7, 8, 32)).astype(np.float32)
    np.testing.assert_allclose(
        run(query, pool, q_tile=q_tile), reference(query, pool), **HALF_TOL
    )


def test_partition_planning():
    # Enough items for the threads: no split.
    assert plan_partition_size(8, 8, 1, 8192, 16, threads=2) is None
    assert plan_partition_size(1, 8, 4, 8192, 16, threads=2) is None
    # Batch 1 with long context: split into 512-token partitions.
    assert plan_partition_size(1, 8, 1, 8192, 16, threads=2) == 512
    assert plan_partition_size(1, 1, 1, 8192, 48, threads=2) == 480
    # Short contexts are never split.
    assert plan_partition_size(1, 1, 1, 512, 16, threads=2) is None
    # Blocks larger than the default partition: one block per partition.
    assert plan_partition_size(1, 1, 1, 8192, 1024, threads=2) == 1024


def test_polynomial_exp_is_accurate():
    xs = np.concatenate(
        [-np.geomspace(1e-8, 87.0, 4000), np.linspace(-87.0, 0.0, 4001)]
    ).astype(np.float32)
    got = np.array([exp_nonpositive(x) for x in xs], dtype=np.float64)
    want = np.exp(xs.astype(np.float64))
    assert np.max(np.abs(got / want - 1)) < 5e-7
    # Far below the floor: tiny, never 0/0 material like NaN.
    assert 0 < exp_nonpositive(np.float32(-1e4)) < 2e-38


def test_the_prefetched_blocks_follow_the_walk():
    """`_following_block` names the block the kernel reads next (the walk
    jumps from the sink blocks to the window's first), -1 at a hole or past
    the last block: what the kernel prefetches one and two blocks ahead."""
    from llmir.runtime.cpu.attention_kernels import _following_block

    table = np.array([[10, 11, 12, -1, 14, 15, 16, 17]], np.int32)

    def walk(start: int, last: int, sink_end: int, window_block: int) -> list:
        steps = []
        for logical in range(start, last + 1):
            following, block = _following_block(
                table, 0, logical, last, 16, sink_end, window_block
            )
            steps.append((int(following), int(block)))
        return steps

    # No sinks or window: every next block, the hole and the end as -1.
    assert walk(0, 7, 0, 0) == [
        (1, 11), (2, 12), (3, -1), (4, 14), (5, 15), (6, 16), (7, 17), (8, -1)
    ]  # fmt: skip
    # One sink block (tokens 0-15), the window from block 5 on: after the
    # sink the walk jumps to block 5.
    assert walk(0, 7, 16, 5)[0] == (5, 15)
    assert walk(5, 7, 16, 5) == [(6, 16), (7, 17), (8, -1)]
    # The last block of a partition ends the walk there.
    assert walk(4, 5, 0, 0) == [(5, 15), (6, -1)]
