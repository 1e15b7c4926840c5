"""The i8 integer tiles of `llmir.runtime.cpu.vnni`: each product within the
bound its 15-bit integers allow (half a step per query element or weight,
times the codes it multiplies), against float64; masking of the lanes
outside a span; and sums at the integers' extremes.  The kernel with the
tiles, and with them turned off, is checked against float64 over the stored
values in `test_quantized.py`."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from llmir.runtime.cpu import vnni

needs_vnni = pytest.mark.skipif(
    not vnni.available(), reason="the CPU has no AVX-512 VNNI"
)


@njit(cache=True)
def _logits(q_rows, scales, codes, head_dim, scores, words, rows):
    if rows == 1:
        vnni.quantize_query_row(q_rows, 0, scales, words)  # pyright: ignore[reportCallIssue]
        for t in range(0, codes.shape[0], 8):
            vnni.qk_codes_row(words, codes, t, scores, head_dim)  # pyright: ignore[reportCallIssue]
    else:
        vnni.quantize_query_rows(q_rows, 0, scales, words)  # pyright: ignore[reportCallIssue]
        for t in range(0, codes.shape[0], vnni.KEYS):
            vnni.qk_codes(words, codes, t, scores, head_dim)  # pyright: ignore[reportCallIssue]


@njit(cache=True)
def _values(weights, codes, lo, hi, acc, base, value_meta, words, rows):
    vnni.pv_codes(weights, codes, lo, hi, acc, 0, base, value_meta, words, rows)


def _words(head_dim: int) -> np.ndarray:
    width = max(vnni.SPAN_TOKENS + 16, head_dim + vnni.QUERY_WORDS)
    return np.zeros((vnni.ROWS, width), np.int16)


@needs_vnni
@pytest.mark.parametrize("rows", [4, 1])
@pytest.mark.parametrize("head_dim", [32, 128, vnni.MAX_HEAD_DIM])
@pytest.mark.parametrize("extremes", [False, True], ids=["random", "extreme codes"])
def test_logits_within_half_a_step_of_each_scaled_query_element(
    head_dim: int, extremes: bool, rows: int
) -> None:
    rng = np.random.default_rng(head_dim)
    q_rows = rng.standard_normal((vnni.ROWS, head_dim)).astype(np.float32)
    scales = rng.uniform(1e-3, 0.1, head_dim).astype(np.float32)
    scales[3] = 2.0  # an outlier channel: the others get coarser steps
    q_rows[1] = 0.0  # a row of zeros has no step
    block = 16
    codes = rng.integers(1, 256, (block, head_dim + 40), dtype=np.uint8)
    if extremes:
        # The largest sums the int32 lanes hold: every code at an end and
        # the query at its largest level everywhere.
        codes[:, :head_dim] = 255
        codes[::2, :head_dim] = 1
        q_rows[2] = 1.0 / scales
    scores = np.full((vnni.ROWS, block), np.nan, np.float32)
    _logits(q_rows, scales, codes, head_dim, scores, _words(head_dim), rows)
    if rows == 1:  # each row on its own: the others are rows 1-3 in turn
        for row in range(1, vnni.ROWS):
            alone = np.full((vnni.ROWS, block), np.nan, np.float32)
            _logits(q_rows[row:], scales, codes, head_dim, alone, _words(head_dim), 1)
            scores[row] = alone[0]

    scaled = (q_rows * scales).astype(np.float64)  # float32 products
    centred = codes[:, :head_dim].astype(np.float64) - 128
    exact = scaled @ centred.T
    step = np.abs(scaled).max(axis=1, keepdims=True) / vnni.WEIGHT_LEVELS
    bound = 0.5 * step * np.abs(centred).sum(axis=1)[None, :]
    bound += 1e-6 * np.abs(scaled) @ np.abs(centred).T  # float32 rounding
    error = np.abs(scores - exact)
    assert np.all(error <= bound), float((error / np.maximum(bound, 1e-30)).max())
    assert np.all(scores[1] == 0.0)


@needs_vnni
@pytest.mark.parametrize("rows", [4, 1])
@pytest.mark.parametrize(
    ("block", "lo", "hi"),
    [(16, 0, 16), (16, 3, 11), (16, 5, 6), (64, 1, 63), (256, 0, 256), (256, 7, 201)],
)
# The sums go 32 channels a pass: two passes at 64, four at 128, five at 160.
@pytest.mark.parametrize("head_dim", [64, 128, 160])
def test_value_sums_within_half_a_step_of_each_weight(
    block: int, lo: int, hi: int, rows: int, head_dim: int
) -> None:
    base = 80
    rng = np.random.default_rng(block + lo + head_dim)
    weights = np.full((vnni.ROWS, block), np.nan, np.float32)
    weights[:, lo:hi] = rng.uniform(0.0, 1.0, (vnni.ROWS, hi - lo))
    weights[2, lo:hi] = 0.0  # a row whose weights all underflowed
    weights[3, lo:hi] = 1.0  # the largest sums: every weight at the top
    value_meta = np.full(2 * block, np.nan, np.float32)
    value_meta[2 * lo : 2 * hi : 2] = rng.uniform(0.01, 1.0, hi - lo)
    codes = rng.integers(1, 256, (block, base + head_dim), dtype=np.uint8)
    codes[::3, base:] = 255
    codes[1::3, base:] = 1
    acc = rng.standard_normal((vnni.ROWS, head_dim)).astype(np.float32)
    before = acc.astype(np.float64)
    if rows == 1:  # each row on its own, as the row r of the accumulator
        for r in range(vnni.ROWS):
            _values(
                weights[r:], codes, lo, hi, acc[r:], base, value_meta,
                _words(head_dim), 1,
            )  # fmt: skip
    else:
        _values(weights, codes, lo, hi, acc, base, value_meta, _words(head_dim), 4)

    w = (weights[:, lo:hi] * value_meta[2 * lo : 2 * hi : 2]).astype(np.float64)
    centred = codes[lo:hi, base:].astype(np.float64) - 128
    exact = before + w @ centred
    bound = np.zeros_like(exact)
    for start in range(0, hi - lo, vnni.SPAN_TOKENS):  # a step per span
        span = slice(start, start + vnni.SPAN_TOKENS)
        step = w[:, span].max(axis=1, keepdims=True) / vnni.WEIGHT_LEVELS
        bound += 0.5 * step * np.abs(centred[span]).sum(axis=0)[None, :]
    bound += 1e-6 * (np.abs(before) + np.abs(w) @ np.abs(centred))  # float32
    error = np.abs(acc - exact)
    assert np.all(error <= bound), float((error / np.maximum(bound, 1e-30)).max())
    np.testing.assert_array_equal(acc[2], before[2].astype(np.float32))


def test_the_environment_turns_the_tiles_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMIR_CPU_VNNI", "0")
    assert not vnni.enabled()
    monkeypatch.setenv("LLMIR_CPU_VNNI", "1")
    assert vnni.enabled() == vnni.available()
