"""The AMX path of f16 and bf16 attention (`llmir.runtime.cpu.amx_attention`):
its pieces against numpy, and the kernel through it against the float64
reference and against its AVX-512 fallback (forced with ``use_amx=False``,
which every CPU runs; the AMX cases skip where the CPU or the OS has no
AMX)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numba import njit

from llmir.runtime.cpu import amx, amx_attention
from llmir.runtime.cpu.attention_kernels import run_paged_attention
from llmir.runtime.dtypes import element_type
from llmir.testing.reference import build_paged_pool, reference_paged_attention

HALF_TOL = 1e-3  # relative and absolute, as in test_attention_kernels

needs_amx = pytest.mark.skipif(
    not amx.available(), reason="no AMX bf16 on this CPU, or not granted by the OS"
)


def bf16_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy's `split_bf16`: the nearest bf16 of x, then of the rest."""

    def nearest(bits: np.ndarray) -> np.ndarray:
        wide = bits.astype(np.uint64)
        return ((wide + 0x7FFF + ((wide >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)

    top = nearest(x.view(np.uint32))
    rest = (x - top.view(np.float32)).astype(np.float32)
    bottom = nearest(rest.view(np.uint32))
    return (top >> 16).astype(np.uint16), (bottom >> 16).astype(np.uint16)


def widen(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@njit(cache=True)
def split(x: Any, rows: Any, lo: Any, hi: Any, high: Any, low: Any) -> Any:
    return amx_attention.split_bf16(x, rows, lo, hi, high, low)  # pyright: ignore[reportCallIssue]


def test_split_bf16_is_the_nearest_bf16_then_the_rest():
    # Every CPU runs this piece (plain AVX-512 or AVX2 vectors).
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 48)) * 10.0 ** rng.integers(-8, 8, (5, 48))).astype(
        np.float32
    )
    high = np.zeros((5, 48), np.uint16)
    low = np.zeros((5, 48), np.uint16)
    assert split(x, 4, 16, 48, high, low)
    expected_high, expected_low = bf16_parts(x)
    np.testing.assert_array_equal(high[:4, 16:], expected_high[:4, 16:])
    np.testing.assert_array_equal(low[:4, 16:], expected_low[:4, 16:])
    assert not high[4].any() and not high[:, :16].any()  # nothing else written
    # The two parts hold x to 2^-17 of it (2^-9 of 2^-9, both rounded).
    rebuilt = widen(high[:4, 16:]) + widen(low[:4, 16:])
    reference = x[:4, 16:].astype(np.float64)
    assert np.all(np.abs(rebuilt - reference) <= 2.0**-17 * np.abs(reference))
    exact = widen(expected_high).astype(np.float32)
    assert not split(exact, 5, 0, 48, high, low)  # bf16 already: no low part


@njit(cache=True)
def products(
    q: Any, keys: Any, values: Any, weights: Any, scores: Any, acc: Any, lo: Any,
    hi: Any,
) -> None:  # fmt: skip
    block_size, head_dim = keys.shape
    q_high = np.zeros((16, head_dim), np.uint16)
    q_low = np.zeros((16, head_dim), np.uint16)
    with_low = amx_attention.split_bf16(q, 16, 0, head_dim, q_high, q_low)  # pyright: ignore[reportCallIssue]
    key_pairs = np.empty((head_dim // 2, block_size), np.uint32)
    value_pairs = np.zeros((max(block_size, 32) // 2, head_dim), np.uint32)
    p_high = np.zeros((16, max(block_size, 32)), np.uint16)
    p_low = np.zeros((16, max(block_size, 32)), np.uint16)
    amx_attention.configure()
    amx_attention.key_pairs(keys, 0, block_size, key_pairs)
    amx_attention.value_pairs(values, 0, block_size, lo, hi, value_pairs)
    amx_attention.scores(
        q_high, q_low, with_low, 0, key_pairs, key_pairs, False, 0, block_size,
        scores,
    )  # fmt: skip
    amx_attention.split_bf16(weights, 16, 0, block_size, p_high, p_low)  # pyright: ignore[reportCallIssue]
    amx_attention.accumulate(
        p_high, p_low, value_pairs, value_pairs, False, 0, max(block_size, 32), acc,
        0,
    )  # fmt: skip
    amx.release()  # pyright: ignore[reportCallIssue]


@needs_amx
@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
def test_tile_products_against_float64(block_size: int):
    # S = Q K^T over the whole block, acc += P V over slots 3:hi only: the
    # value pairs outside hold zeros, so NaN values there weigh nothing.
    rng = np.random.default_rng(block_size)
    head_dim, hi = 64, block_size - 5
    kind = element_type("bf16")
    keys = kind.encode(rng.standard_normal((block_size, head_dim), dtype=np.float32))
    values = kind.encode(rng.standard_normal((block_size, head_dim), dtype=np.float32))
    values[:3] = values[hi:] = kind.encode(np.full((1, head_dim), np.nan, np.float32))
    q = rng.standard_normal((16, head_dim), dtype=np.float32)
    weights = rng.random((16, block_size), dtype=np.float32)
    acc = rng.standard_normal((16, head_dim), dtype=np.float32)
    expected_acc = acc.astype(np.float64) + weights[:, 3:hi].astype(np.float64) @ widen(
        values[3:hi]
    )
    scores = np.full((16, block_size), np.nan, np.float32)
    products(q, keys, values, weights, scores, acc, 3, hi)
    expected_scores = q.astype(np.float64) @ widen(keys).T
    # float32 accumulation of operands within 2^-17 of their float32 values.
    scale = np.abs(expected_scores).max()
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(
        acc, expected_acc, rtol=0, atol=2e-5 * np.abs(expected_acc).max()
    )


def attend(
    seed: int, kind_name: str, lens: list[int], tq: int, q_heads: int,
    num_heads: int, block_size: int, use_amx: bool, head_dim: int = 64,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(kernel output, float64 reference) for random K/V and queries."""
    rng = np.random.default_rng(seed)
    kind = element_type(kind_name)
    keys = [rng.standard_normal((n, num_heads, head_dim)) for n in lens]
    values = [rng.standard_normal((n, num_heads, head_dim)) for n in lens]
    pool = build_paged_pool(keys, values, block_size, kind, rng)
    query = rng.standard_normal((len(lens), tq, q_heads, head_dim)).astype(np.float32)
    q_tile = options.pop("q_tile", None)
    out = np.full(query.shape, np.nan, dtype=np.float32)
    layer, table, seq_lens = pool.kv_pool[0], pool.block_table, pool.seq_lens
    scale = head_dim**-0.5
    run_paged_attention(
        query, layer, kind.code, table, seq_lens, out, scale=scale, q_tile=q_tile,
        use_amx=use_amx, **options,
    )  # fmt: skip
    expected = reference_paged_attention(
        query, layer, kind, table, seq_lens, scale=scale, **options
    )
    return out, expected


PREFILL_OPTIONS = [
    {},
    {"causal": False},
    {"sliding_window": 21},
    {"sliding_window": 21, "sink_tokens": 3},
    {"sliding_window": 40, "sink_tokens": 20},
    {"logits_soft_cap": 2.0},
    {"sliding_window": 9, "logits_soft_cap": 3.0, "q_tile": 5},
]


@pytest.mark.parametrize("kind_name", ["bf16", "f16"])
@pytest.mark.parametrize("use_amx", [pytest.param(True, marks=needs_amx), False])
@pytest.mark.parametrize("block_size", [16, 32, 64])
@pytest.mark.parametrize(("q_heads", "num_heads"), [(2, 2), (8, 2)])
@pytest.mark.parametrize("options", PREFILL_OPTIONS)
def test_prefill_against_float64(
    kind_name: str, use_amx: bool, block_size: int, q_heads: int, num_heads: int,
    options: Any,
):  # fmt: skip
    # Chunked prefill (33 new queries on contexts of 40-150 tokens: blocks
    # cut at both ends of an item's range, rows padded to sixteen, NaN in
    # every unwritten slot), an empty sequence, GQA groups of one and four.
    out, expected = attend(
        block_size, kind_name, [40, 150, 0, 77], 33, q_heads, num_heads,
        block_size, use_amx, **dict(options),
    )  # fmt: skip
    np.testing.assert_allclose(out, expected, rtol=HALF_TOL, atol=HALF_TOL)
    assert not out[2].any()  # the empty sequence gives zeros


@needs_amx
@pytest.mark.parametrize("options", [{}, {"sliding_window": 2}])
def test_masked_slots_weigh_nothing_in_the_tiles(options: Any):
    # Token 1 holds values of ~1e37: every query that does not attend it
    # (query 0 before it; with a window of 2, queries 3 on past it) must
    # match the reference as if it were not there; a masked slot's weight
    # is exactly 0, not the exponential's floor.
    rng = np.random.default_rng(8)
    tokens, head_dim = 48, 64
    kind = element_type("bf16")  # (f16 tops out at 65504: nothing to see)
    keys = rng.standard_normal((tokens, 1, head_dim))
    values = rng.standard_normal((tokens, 1, head_dim))
    values[1] *= 1e37
    pool = build_paged_pool([keys], [values], 32, kind, rng)
    query = rng.standard_normal((1, tokens, 1, head_dim)).astype(np.float32)
    out = np.full(query.shape, np.nan, dtype=np.float32)
    layer, table, lens = pool.kv_pool[0], pool.block_table, pool.seq_lens
    options["scale"] = head_dim**-0.5
    run_paged_attention(query, layer, kind.code, table, lens, out, **options)
    expected = reference_paged_attention(query, layer, kind, table, lens, **options)
    sees = [1, 2] if options.get("sliding_window") else list(range(1, tokens))
    blind = [q for q in range(tokens) if q not in sees]
    np.testing.assert_allclose(
        out[:, blind], expected[:, blind], rtol=HALF_TOL, atol=HALF_TOL
    )
    size = np.abs(expected[:, sees]).max()
    np.testing.assert_allclose(out[:, sees], expected[:, sees], atol=HALF_TOL * size)


@needs_amx
@pytest.mark.parametrize("kind_name", ["bf16", "f16"])
def test_tiles_and_fallback_agree_closely(kind_name: str):
    # Both are within a few 1e-6 of float32 arithmetic on the stored
    # values: far closer to each other than the half-precision tolerance.
    amx_out, expected = attend(4, kind_name, [300, 129], 64, 8, 2, 64, True)
    fallback, _ = attend(4, kind_name, [300, 129], 64, 8, 2, 64, False)
    np.testing.assert_allclose(amx_out, fallback, rtol=0, atol=5e-5)
    np.testing.assert_allclose(amx_out, expected, rtol=0, atol=5e-5)


def test_environment_turns_the_tiles_off(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMIR_CPU_AMX", "0")
    assert not amx.enabled()
    monkeypatch.setenv("LLMIR_CPU_AMX", "1")
    assert amx.enabled() == amx.available()


@pytest.mark.parametrize("kind_name", ["bf16", "f16"])
@pytest.mark.parametrize("use_amx", [pytest.param(True, marks=needs_amx), False])
def test_holes_break_the_spans(kind_name: str, use_amx: bool):
    # Blocks of 16 go four at a time; a pruned block (a hole in the table)
    # ends a span and is read by no one.
    rng = np.random.default_rng(9)
    kind = element_type(kind_name)
    lens, head_dim = [150, 90], 64
    keys = [rng.standard_normal((n, 2, head_dim)) for n in lens]
    values = [rng.standard_normal((n, 2, head_dim)) for n in lens]
    pool = build_paged_pool(keys, values, 16, kind, rng)
    table = pool.block_table.copy()
    table[0, [1, 5, 6]] = -1
    table[1, 3] = -1
    query = rng.standard_normal((2, 40, 8, head_dim)).astype(np.float32)
    out = np.full(query.shape, np.nan, dtype=np.float32)
    layer, seq_lens = pool.kv_pool[0], pool.seq_lens
    run_paged_attention(
        query, layer, kind.code, table, seq_lens, out, scale=0.125, use_amx=use_amx
    )
    expected = reference_paged_attention(
        query, layer, kind, table, seq_lens, scale=0.125
    )
    np.testing.assert_allclose(out, expected, rtol=HALF_TOL, atol=HALF_TOL)
