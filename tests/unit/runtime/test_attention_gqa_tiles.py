"""The vector tiles of the CPU kernels (`llmir.runtime.cpu.simd`) against the
float64 reference, alone and through the kernel.

The tiles serve items whose query rows come in fours: a GQA group of four
or eight in decode, and in prefill four queries of one kv head (group 1,
q_tile 4) or two queries of a group of two (q_tile 2); on the causal
diagonal and at a window's edge each row's other slots are masked.  Fours
beside attention sinks, or with a row that has no slot in the block, go
row by row; head dimensions that are not a multiple of the tile's sixteen
channels take the scratch path.  The cases below put such items next to
each other, with lengths that do and do not fill the last block,
windows, soft cap, context partitions and empty sequences.  A single
half-precision row (MHA decode) takes the one-row tiles, checked alone
and through the kernel at head dimensions 32 to 256.  The tiles over
quantized codes (and the float16 scale conversion) are checked alone here;
through the kernel in tests/unit/runtime/test_quantized.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numba import njit

from llmir.runtime.cpu.attention_kernels import run_paged_attention
from llmir.runtime.cpu.simd import (
    cap_row,
    cap_rows,
    halves_to_f32,
    pv_row,
    pv_row_stream,
    pv_tile,
    qk_columns,
    qk_row,
    qk_row_stream,
    qk_tile,
    row_exponential,
    row_exponentials,
    row_maxima,
    row_maximum,
    token_group_ranges,
    token_ranges,
    transpose_block,
)
from llmir.runtime.dtypes import element_type
from llmir.testing.reference import build_paged_pool, reference_paged_attention

HALF_TOL = 1e-3  # relative and absolute, as in test_attention_kernels
F32_TOL = 1e-5


def attend(
    rng: np.random.Generator,
    kind_name: str,
    lens: list[int],
    tq: int,
    q_heads: int,
    num_heads: int,
    block_size: int,
    head_dim: int = 32,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """(kernel output, float64 reference) for random K/V/queries."""
    kind = element_type(kind_name)
    keys = [rng.standard_normal((n, num_heads, head_dim)) for n in lens]
    values = [rng.standard_normal((n, num_heads, head_dim)) for n in lens]
    pool = build_paged_pool(keys, values, block_size, kind, rng)
    query = rng.standard_normal((len(lens), tq, q_heads, head_dim)).astype(np.float32)
    kernel_options = {
        k: options.pop(k) for k in ("partition_size", "q_tile") if k in options
    }
    out = np.full(query.shape, np.nan, dtype=np.float32)
    run_paged_attention(
        query,
        pool.kv_pool[0],
        kind.code,
        pool.block_table,
        pool.seq_lens,
        out,
        scale=head_dim**-0.5,
        **options,
        **kernel_options,
    )
    expected = reference_paged_attention(
        query,
        pool.kv_pool[0],
        kind,
        pool.block_table,
        pool.seq_lens,
        scale=head_dim**-0.5,
        **options,
    )
    return out, expected


@pytest.mark.parametrize("kind_name", ["f16", "bf16"])
@pytest.mark.parametrize("block_size", [1, 3, 8, 16])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"sliding_window": 5},
        {"logits_soft_cap": 3.0},
        {"partition_size": 48},
        {"causal": False, "sliding_window": 7, "logits_soft_cap": 2.0},
    ],
)
def test_group_of_four_decode(kind_name: str, block_size: int, options: Any):
    rng = np.random.default_rng(block_size)
    lens = [0, 1, 5, 37, 96]
    if "partition_size" in options:
        options["partition_size"] = block_size * (48 // block_size)
    out, expected = attend(rng, kind_name, lens, 1, 8, 2, block_size, **options)
    np.testing.assert_allclose(out, expected, rtol=HALF_TOL, atol=HALF_TOL)
    assert not out[0].any()  # the empty sequence gives zeros


@pytest.mark.parametrize("kind_name", ["f16", "bf16", "f32"])
@pytest.mark.parametrize(("q_heads", "head_dim"), [(16, 48), (16, 128), (8, 40)])
def test_groups_of_eight_and_odd_head_dims(kind_name: str, q_heads: int, head_dim: int):
    # 16/2: two tiles of four rows per block; D = 40 is no multiple of the
    # tile's sixteen channels and goes through the scratch path.
    rng = np.random.default_rng(head_dim)
    out, expected = attend(
        rng, kind_name, [3, 33, 64], 1, q_heads, 2, 8, head_dim=head_dim,
        sliding_window=20,
    )  # fmt: skip
    tolerance = F32_TOL if kind_name == "f32" else HALF_TOL
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("kind_name", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("head_dim", [32, 64, 96, 128, 256, 40])
def test_single_row_decode(kind_name: str, head_dim: int):
    # MHA decode, one row per item: halves through `qk_row_stream` and
    # `pv_row_stream` (chunks of 128, 64 or 32 channels by the head
    # dimension), float32, head_dim 40 and block 4 through the streaming
    # loop; the slots a row attends start and end mid-block.
    rng = np.random.default_rng(head_dim)
    lens = [1, 7, 45, 130]
    tolerance = F32_TOL if kind_name == "f32" else HALF_TOL
    for block_size, options in [
        (4, {}),
        (8, {"sliding_window": 11}),
        (16, {"logits_soft_cap": 3.0, "sliding_window": 40, "sink_tokens": 3}),
        (64, {}),
        (64, {"partition_size": 64, "sliding_window": 70}),
    ]:
        out, expected = attend(
            rng, kind_name, lens, 1, 3, 3, block_size, head_dim=head_dim,
            **options,
        )  # fmt: skip
        np.testing.assert_allclose(
            out, expected, rtol=tolerance, atol=tolerance, err_msg=f"{block_size}"
        )


def stored_block(
    rng: np.random.Generator, kind: Any, slots: int, head_dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random keys and values of one block as `kind` stores them, then the
    stored values in float64: the reference the tiles' exact products of
    stored elements are checked against."""
    stored = [
        kind.encode(rng.standard_normal((slots, head_dim), dtype=np.float32))
        for _ in range(2)
    ]
    keys, values = (kind.decode(s).astype(np.float64) for s in stored)
    return stored[0], stored[1], keys, values


@pytest.mark.parametrize("kind_name", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("prefetching", [False, True])
def test_tiles_against_float64(kind_name: str, prefetching: bool):
    # The tiles alone: exact products of stored values, summed in float32,
    # with and without prefetching a block's length ahead (past the arrays'
    # end: a hint, never a fault).
    rng = np.random.default_rng(7)
    kind = element_type(kind_name)
    head_dim, slots = 48, 6
    stored_keys, stored_values, keys, values = stored_block(rng, kind, slots, head_dim)
    q_rows = rng.standard_normal((6, head_dim), dtype=np.float32)
    weights = rng.random((4, slots), dtype=np.float32)
    acc = rng.standard_normal((6, head_dim), dtype=np.float32)
    scores = np.full((4, slots), np.nan, np.float32)
    expected_acc = acc.astype(np.float64)
    expected_acc[1:5] += weights[:, 1:5].astype(np.float64) @ values[1:5]
    ahead = stored_keys.nbytes if prefetching else 0
    tiles(q_rows, stored_keys, stored_values, weights, scores, acc, ahead, kind.code)
    expected_scores = q_rows[1:5].astype(np.float64) @ keys[2:4].T
    np.testing.assert_allclose(scores[:, 2:4], expected_scores, rtol=1e-5, atol=1e-5)
    assert np.isnan(scores[:, [0, 1, 4, 5]]).all()  # nothing else written
    np.testing.assert_allclose(acc, expected_acc, rtol=1e-5, atol=1e-5)


@njit(cache=True)
def row_stream_tiles(
    q_rows: Any, keys: Any, values: Any, weights: Any, scores: Any, acc: Any,
    ahead: int, kind_code: int,
) -> None:  # fmt: skip
    qk_row_stream(q_rows, 1, keys, 8, scores, ahead, kind_code)
    pv_row_stream(weights, values, 3, 13, acc, ahead, kind_code)


@pytest.mark.parametrize("kind_name", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("head_dim", [32, 64, 96, 128, 256])
def test_row_stream_tiles_against_float64(kind_name: str, head_dim: int):
    # One row: eight scores of query row 1 from slot 8 on, ``P V`` over
    # slots 3:13 (chunks of 128, 64 or 32 channels by the head dimension),
    # prefetching a block's length ahead (past the arrays' end: a hint,
    # never a load).
    rng = np.random.default_rng(head_dim)
    kind = element_type(kind_name)
    slots = 16
    stored_keys, stored_values, keys, values = stored_block(rng, kind, slots, head_dim)
    q_rows = rng.standard_normal((2, head_dim), dtype=np.float32)
    weights = rng.random((1, slots), dtype=np.float32)
    acc = rng.standard_normal((1, head_dim), dtype=np.float32)
    scores = np.full((1, slots), np.nan, np.float32)
    expected_acc = (
        acc.astype(np.float64) + weights[:, 3:13].astype(np.float64) @ values[3:13]
    )
    ahead = stored_keys.nbytes
    row_stream_tiles(
        q_rows, stored_keys, stored_values, weights, scores, acc, ahead, kind.code
    )
    expected_scores = q_rows[1:].astype(np.float64) @ keys[8:16].T
    np.testing.assert_allclose(scores[:, 8:], expected_scores, rtol=1e-5, atol=1e-5)
    assert np.isnan(scores[:, :8]).all()  # nothing else written
    np.testing.assert_allclose(acc, expected_acc, rtol=1e-5, atol=1e-5)


@njit(cache=True)
def column_tiles(q_rows: Any, keys: Any, keys_t: Any, scores: Any) -> None:
    transpose_block(keys, 9, 30, keys_t)  # pyright: ignore[reportCallIssue]  # widened to slots 8:32
    qk_columns(q_rows, 1, keys_t, 16, scores)


def test_column_tiles_against_float64():
    # Scores of four rows by sixteen keys from a transposed block; the
    # transpose covers whole eights of slots and nothing else.
    rng = np.random.default_rng(11)
    head_dim, slots = 48, 32
    keys = rng.standard_normal((slots, head_dim), dtype=np.float32)
    q_rows = rng.standard_normal((6, head_dim), dtype=np.float32)
    keys_t = np.full((head_dim, slots), np.nan, np.float32)
    scores = np.full((4, slots), np.nan, np.float32)
    column_tiles(q_rows, keys, keys_t, scores)
    np.testing.assert_array_equal(keys_t[:, 8:32], keys[8:32].T)
    assert np.isnan(keys_t[:, :8]).all()
    expected = q_rows[1:5].astype(np.float64) @ keys[16:32].T.astype(np.float64)
    np.testing.assert_allclose(scores[:, 16:32], expected, rtol=1e-5, atol=1e-5)
    assert np.isnan(scores[:, :16]).all()


@pytest.mark.parametrize("kind_name", ["f32", "bf16"])
@pytest.mark.parametrize(
    "options", [{}, {"sliding_window": 21, "sink_tokens": 3}, {"causal": False}]
)
def test_prefill_column_tiles(kind_name: str, options: Any):
    # Blocks of 16 read by several fours: scores from the transposed keys.
    rng = np.random.default_rng(5)
    out, expected = attend(
        rng, kind_name, [40, 75, 0], 33, 2, 2, 16, q_tile=12, **options
    )
    tolerance = F32_TOL if kind_name == "f32" else HALF_TOL
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)


@njit(cache=True)
def tiles(
    q_rows: Any, keys: Any, values: Any, weights: Any, scores: Any, acc: Any,
    ahead: Any, kind: Any,
) -> None:  # fmt: skip
    qk_tile(q_rows, 1, keys, 2, scores, ahead, kind)
    pv_tile(weights, values, 1, 5, acc, 1, 0, acc[0], ahead, kind)  # no scales


@pytest.mark.parametrize("kind_name", ["f16", "bf16", "f32"])
@pytest.mark.parametrize(
    ("q_heads", "num_heads", "q_tile"),
    [(2, 2, 4), (2, 2, 8), (4, 2, 2), (8, 2, 1), (8, 2, 3)],
)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"sliding_window": 6},
        {"sliding_window": 6, "sink_tokens": 2},
        {"sliding_window": 6, "logits_soft_cap": 2.0},
        {"causal": False},
    ],
)
def test_prefill_tiles_of_four_rows(
    kind_name: str, q_heads: int, num_heads: int, q_tile: int, options: Any
):
    # Rows of different queries share a block's bounds away from the causal
    # diagonal and the window edge; on the diagonal and at the window edge
    # the four rows tile with each row's other slots masked (after the soft
    # cap), beside sinks they go one by one (2/2 with eight queries per
    # item: some fours of a block tile, others do not).
    rng = np.random.default_rng(q_heads * 10 + q_tile)
    out, expected = attend(
        rng, kind_name, [9, 30, 0], 9, q_heads, num_heads, 4, q_tile=q_tile, **options
    )
    tolerance = F32_TOL if kind_name == "f32" else HALF_TOL
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)


def check_huge_value_rows(
    rng: np.random.Generator, tokens: int, block_size: int, huge: int,
    sees: list[int], **options: Any,
) -> None:  # fmt: skip
    """A causal f32 prefill of `tokens` tokens (one head, D = 32) whose
    token `huge` holds values of ~1e37: the queries in `sees` weigh them in
    (checked relative to their size), every other query must match the
    float64 reference as if they were not there."""
    head_dim = 32
    keys = rng.standard_normal((tokens, 1, head_dim))
    values = rng.standard_normal((tokens, 1, head_dim))
    values[huge] *= 1e37
    kind = element_type("f32")
    pool = build_paged_pool([keys], [values], block_size, kind, rng)
    query = rng.standard_normal((1, tokens, 1, head_dim)).astype(np.float32)
    out = np.full(query.shape, np.nan, dtype=np.float32)
    layer, table, lens = pool.kv_pool[0], pool.block_table, pool.seq_lens
    options["scale"] = head_dim**-0.5
    run_paged_attention(query, layer, kind.code, table, lens, out, **options)
    expected = reference_paged_attention(query, layer, kind, table, lens, **options)
    blind = [q for q in range(tokens) if q not in sees]
    np.testing.assert_allclose(
        out[:, blind], expected[:, blind], rtol=F32_TOL, atol=F32_TOL
    )
    size = np.abs(expected[:, sees]).max()
    np.testing.assert_allclose(out[:, sees], expected[:, sees], atol=F32_TOL * size)


@pytest.mark.parametrize("block_size", [16, 32])
def test_slots_past_the_diagonal_weigh_nothing(block_size: int):
    # A causal prefill whose token 3 holds huge values: queries 0-2 tile
    # with query 3 over slots 0-3 and must not see it.  Masked slots get
    # exactly zero weight (the exponential's floor, exp(-87) ~ 1.6e-38,
    # would add ~0.1 of 1e37 here).
    rng = np.random.default_rng(5)
    check_huge_value_rows(rng, block_size, block_size, 3, list(range(3, block_size)))


@pytest.mark.parametrize("block_size", [16, 8])
@pytest.mark.parametrize("soft_cap", [None, 5.0])
def test_slots_before_the_window_weigh_nothing(soft_cap: float | None, block_size: int):
    # A causal prefill with a window of 2 whose token 1 holds huge values:
    # queries 0-3 tile over slots 0-3 (query q attends q-1 and q), so
    # queries 0 (its end) and 3 (its window) must not see token 1, soft cap
    # or not (capped, a masked -inf would turn into -cap and weigh
    # exp(-2 cap) instead of nothing).  Blocks of 16 take the scores from
    # the transposed keys (`qk_columns`), blocks of 8 from `qk_tile`.
    rng = np.random.default_rng(6)
    options: dict[str, Any] = {"sliding_window": 2}
    if soft_cap is not None:
        options["logits_soft_cap"] = soft_cap
    check_huge_value_rows(rng, 16, block_size, 1, [1, 2], **options)


@njit(cache=True)
def soft_capped(scores: Any, lo: Any, hi: Any, cap: Any, four: Any) -> None:
    if four:
        cap_rows(scores, lo, hi, cap)
    else:
        cap_row(scores, lo, hi, cap)


@pytest.mark.parametrize("cap", [1.0, 30.0])
def test_soft_cap_tanh_within_a_few_ulps(cap: float):
    # Both sides of the series' end (|y| = 0.25), tiny and saturated
    # values, zero and signs, in the vector lanes and the scalar rest.
    y = np.concatenate(
        [
            np.linspace(-12, 12, 20001),
            np.geomspace(1e-8, 3, 10001),
            -np.geomspace(1e-8, 3, 1001),
            [0.0, 0.25, -0.25, 0.2499999, 100.0, -100.0],
        ]
    )
    scores = np.tile((y * cap).astype(np.float32), (4, 1))
    expected = cap * np.tanh(scores.astype(np.float64) / cap)
    soft_capped(scores, 0, scores.shape[1], np.float32(cap), True)
    error = np.abs(scores - expected) / np.maximum(np.abs(expected), 1e-30)
    assert error.max() < 4e-7  # measured 1.9e-7 and 2.3e-7: ~3 float32 ulps
    np.testing.assert_array_equal(np.sign(scores), np.sign(expected))
    row = (y * cap).astype(np.float32)[None, :].copy()
    soft_capped(row, 3, row.shape[1] - 2, np.float32(cap), False)
    original = (y * cap).astype(np.float32)
    assert np.array_equal(row[0, :3], original[:3])  # outside lo:hi untouched
    assert np.array_equal(row[0, -2:], original[-2:])
    np.testing.assert_allclose(row[0, 3:-2], expected[0, 3:-2], rtol=4e-7, atol=0)


@pytest.mark.parametrize("kind_name", ["f16", "bf16"])
def test_large_logits_stay_finite_in_the_tile(kind_name: str):
    # Keys far apart in scale: exp underflows for most tokens of a block and
    # the running max jumps between blocks; nothing may overflow or turn NaN.
    rng = np.random.default_rng(3)
    kind = element_type(kind_name)
    head_dim = 32
    n = 70
    scales = np.where(np.arange(n) % 9 == 0, 300.0, 1.0)[:, None, None]
    keys = [rng.standard_normal((n, 1, head_dim)) * scales]
    values = [rng.standard_normal((n, 1, head_dim))]
    pool = build_paged_pool(keys, values, 8, kind, rng)
    query = rng.standard_normal((1, 1, 4, head_dim)).astype(np.float32)
    out = np.full(query.shape, np.nan, dtype=np.float32)
    run_paged_attention(
        query, pool.kv_pool[0], kind.code, pool.block_table, pool.seq_lens, out,
        scale=1.0,
    )  # fmt: skip
    expected = reference_paged_attention(
        query, pool.kv_pool[0], kind, pool.block_table, pool.seq_lens, scale=1.0
    )
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=HALF_TOL, atol=HALF_TOL)


@njit(cache=True)
def code_tiles(
    q_rows: Any, block: Any, t: Any, scores: Any, weights: Any, lo: Any, hi: Any,
    acc: Any, base: Any, value_meta: Any, kind: Any, single: Any,
) -> None:  # fmt: skip
    if single:
        qk_row(q_rows, 1, block, t, scores, 0, kind)
        pv_row(weights, block, lo, hi, acc, 1, base, value_meta, 0, kind)
    else:
        qk_tile(q_rows, 1, block, t, scores, 0, kind)
        pv_tile(weights, block, lo, hi, acc, 1, base, value_meta, 0, kind)


def _codes(block: np.ndarray, column: int, head_dim: int, kind_name: str) -> Any:
    """The codes of a block's rows from byte `column` on, as float64
    channels (i4: byte j holds channel j low and channel j + D/2 high)."""
    if kind_name == "i8":
        return block[:, column : column + head_dim].astype(np.float64)
    packed = block[:, column : column + head_dim // 2].astype(np.int64)
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float64)


@pytest.mark.parametrize("kind_name", ["i8", "i4"])
@pytest.mark.parametrize("single", [True, False], ids=["row", "four rows"])
def test_code_tiles_against_float64(kind_name: str, single: bool):
    # The tiles over a quantized block's codes: the scores of raw codes, and
    # P V over the codes decoded with each token's group scales and offsets.
    rng = np.random.default_rng(11)
    kind = element_type(kind_name)
    head_dim, slots = 64, 16
    code_bytes = head_dim if kind_name == "i8" else head_dim // 2
    base = code_bytes + 5  # the value codes' column in a row
    block = rng.integers(0, 256, (slots, base + code_bytes + 3), dtype=np.uint8)
    rows, keys = (1, 8) if single else (4, 2)
    groups = 1 if kind_name == "i8" else head_dim // 16
    q_rows = rng.standard_normal((6, head_dim)).astype(np.float32)
    weights = rng.random((rows, slots)).astype(np.float32)
    # Token t's (scale, offset) pairs, group by group.
    value_meta = rng.standard_normal((slots, groups, 2)).astype(np.float32)
    scores = np.full((rows, slots), np.nan, np.float32)
    acc = rng.standard_normal((6, head_dim)).astype(np.float32)
    key_codes = _codes(block, 0, head_dim, kind_name)
    value_codes = _codes(block, base, head_dim, kind_name)
    per_channel = np.repeat(value_meta.astype(np.float64), head_dim // groups, axis=1)
    values = value_codes * per_channel[:, :, 0] + per_channel[:, :, 1]
    lo, hi, t = 3, 14, 8
    expected_acc = acc.astype(np.float64)
    expected_acc[1 : 1 + rows] += weights[:, lo:hi].astype(np.float64) @ values[lo:hi]
    code_tiles(
        q_rows, block, t, scores, weights, lo, hi, acc, base, value_meta.reshape(-1),
        kind.code, single,
    )  # fmt: skip
    expected_scores = (
        q_rows[1 : 1 + rows].astype(np.float64) @ key_codes[t : t + keys].T
    )
    np.testing.assert_allclose(scores[:, t : t + keys], expected_scores, rtol=1e-5)
    assert np.isnan(np.delete(scores, np.s_[t : t + keys], axis=1)).all()
    np.testing.assert_allclose(acc, expected_acc, rtol=1e-5, atol=1e-5)


@njit(cache=True)
def halves(
    src: Any, start: Any, stop: Any, byte: Any, stride: Any, out: Any, first: Any,
    spacing: Any, count: Any,
) -> None:  # fmt: skip
    halves_to_f32(src, start, stop, byte, stride, out, first, spacing, count)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("count", [1, 8, 13])
def test_halves_to_f32_reads_every_stride_th_half(stride: int, count: int):
    # Rows 1 and 2 of three, eight halves per vector and the rest one by
    # one, from an odd byte offset, into slots `spacing` apart.
    rng = np.random.default_rng(count)
    values = rng.standard_normal((3, 64)).astype(np.float16)
    src = np.zeros((3, 140), np.uint8)
    src[:, 3 : 3 + 128] = values.view(np.uint8)
    spacing = count + 2
    out = np.full(2 + 2 * spacing, np.nan, np.float32)
    halves(src, 1, 3, 3, stride, out, 2, spacing, count)
    expected = np.full_like(out, np.nan)
    for t in (1, 2):
        start = 2 + (t - 1) * spacing
        expected[start : start + count] = values[t, ::stride][:count]
    np.testing.assert_array_equal(out, expected)


@njit(cache=True)
def ranges(src: Any, first: Any, n: Any, head: Any, low: Any, high: Any) -> None:
    token_ranges(src, first, n, head, low, high)


@pytest.mark.parametrize("width", [37, 16, 5])
@pytest.mark.parametrize("n", [1, 4])
def test_token_ranges_against_numpy(width: int, n: int):
    # Eight lanes at a time, the rest one by one; tokens 1 .. 1 + n of
    # head 2 of a [tokens, heads, channels] input, addressed in place.
    rng = np.random.default_rng(width)
    src = rng.standard_normal((6, 3, width)).astype(np.float32)
    low = np.full(width, np.nan, np.float32)
    high = np.full(width, np.nan, np.float32)
    ranges(src, 1, n, 2, low, high)
    rows = src[1 : 1 + n, 2]
    np.testing.assert_array_equal(low, rows.min(axis=0))
    np.testing.assert_array_equal(high, rows.max(axis=0))


@njit(cache=True)
def ranges_of_groups(
    src: Any, first: Any, n: Any, head: Any, group: Any, lows: Any, highs: Any
) -> None:
    token_group_ranges(src, first, n, head, group, lows, highs)


@pytest.mark.parametrize(
    ("width", "group"),
    # Groups of 16 eight at a time, then one by one (two, six, 17 groups);
    # other widths through the general span.
    [(128, 16), (32, 16), (96, 16), (272, 16), (128, 128), (40, 8), (15, 5)],
)
def test_token_group_ranges_against_numpy(width: int, group: int):
    rng = np.random.default_rng(width + group)
    src = rng.standard_normal((5, 2, width)).astype(np.float32)
    groups = width // group
    # Tokens 1 .. 4 of head 1, token t's groups at t * groups; one spare
    # entry each: nothing past the last group is written.
    lows = np.full(3 * groups + 1, np.nan, np.float32)
    highs = np.full(3 * groups + 1, np.nan, np.float32)
    ranges_of_groups(src, 1, 3, 1, group, lows, highs)
    by_group = src[1:4, 1].reshape(3 * groups, group)
    np.testing.assert_array_equal(lows[:-1], by_group.min(axis=1))
    np.testing.assert_array_equal(highs[:-1], by_group.max(axis=1))
    assert np.isnan(lows[-1]) and np.isnan(highs[-1])


@njit(cache=True)
def softmax_parts(scores: Any, lo: Any, hi: Any, single: Any) -> Any:
    if single:
        (largest,) = row_maximum(scores, lo, hi)
        (total,) = row_exponential(scores, lo, hi, (largest,))
        return (largest, largest, largest, largest), (total, total, total, total)
    maxima = row_maxima(scores, lo, hi)
    return maxima, row_exponentials(scores, lo, hi, maxima)


@pytest.mark.parametrize("single", [True, False])
@pytest.mark.parametrize(("width", "lo", "hi"), [(16, 0, 16), (64, 3, 61), (16, 5, 9)])
def test_row_softmax_against_float64(single: bool, width: int, lo: int, hi: int):
    # Vectors over the first multiple of eight slots from lo, then the rest
    # one by one; slots outside lo:hi are left alone.
    rng = np.random.default_rng(width + lo)
    scores = (rng.standard_normal((4, width)) * 30).astype(np.float32)
    scores[:, lo] = -200.0  # below exp's floor: a tiny positive weight
    original = scores.copy()
    maxima, sums = softmax_parts(scores, lo, hi, single)
    rows = 1 if single else 4
    for i in range(rows):
        want_max = original[i, lo:hi].max()
        assert maxima[i] == want_max
        # The shift is subtracted in float32, as the kernels do.
        shifted = original[i, lo:hi] - want_max
        want = np.exp(shifted.astype(np.float64))
        np.testing.assert_allclose(scores[i, lo:hi], want, rtol=1e-6, atol=1e-37)
        assert 0 < scores[i, lo] < 1e-37
        np.testing.assert_allclose(sums[i], want.sum(), rtol=1e-6)
    untouched = np.ones(scores.shape, bool)
    untouched[:rows, lo:hi] = False
    np.testing.assert_array_equal(scores[untouched], original[untouched])
