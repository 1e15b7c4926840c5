"""The IR that writes an append's codes (`llmir.runtime.cpu.quant_simd`)
against the scalar arithmetic it repeats (`quant_kernels._code`), byte for
byte: the vector part, the scalar rest and the element-by-element groups,
with offsets into every array; and the once-per-block work of quantized
attention (`llmir.runtime.cpu.simd`): a block's float16 scales read where
the layout spreads them, and the query rows scaled per channel."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numba import njit

from llmir.runtime.cpu.quant_kernels import (
    _code,  # pyright: ignore[reportPrivateUsage]
    load_key_meta,
)
from llmir.runtime.cpu.quant_simd import encode_rows, write_entries
from llmir.runtime.cpu.simd import rows_to_f32, scale_query_rows


@njit(cache=True)
def encode(
    src: Any, first: Any, n: Any, head: Any, dst: Any, row: Any, column: Any,
    inverse: Any, offset: Any, group: Any, bits: Any,
) -> None:  # fmt: skip
    encode_rows(src, first, n, head, dst, row, column, inverse, offset, group, bits)


@njit(cache=True)
def entries(
    dst: Any, row: Any, n: Any, column: Any, step_bits: Any, per_row: Any,
    entry: Any, mask: Any, total: Any,
) -> None:  # fmt: skip
    write_entries(dst, row, n, column, step_bits, per_row, entry, mask, total)


@njit(cache=True)
def key_meta(
    block: Any, meta_col: Any, meta_row: Any, symmetric: Any, scales: Any,
    offsets: Any,
) -> None:  # fmt: skip
    load_key_meta(block, meta_col, meta_row, symmetric, scales, offsets)


@njit(cache=True)
def row_halves(
    src: Any, start: Any, stop: Any, byte: Any, even: Any, odd: Any, first: Any,
    width: Any, paired: Any,
) -> None:  # fmt: skip
    rows_to_f32(src, start, stop, byte, even, odd, first, width, paired)


@njit(cache=True)
def entries_unmasked(
    dst: Any, row: Any, n: Any, column: Any, step_bits: Any, per_row: Any,
    entry: Any, total: Any,
) -> None:  # fmt: skip
    write_entries(dst, row, n, column, step_bits, per_row, entry, None, total)


def expected_codes(
    src: Any, first: int, n: int, head: int, inverse: Any, offset: Any, group: int,
    bits: int,
) -> Any:  # fmt: skip
    """The bytes `encode_rows` must write, one `_code` at a time."""
    d = src.shape[2]
    levels = np.float32(127 if bits == 8 else 15)
    codes = np.zeros((n, d), np.int64)
    for t in range(n):
        for c in range(d):
            at = c if group == 0 else t * (d // group) + c // group
            codes[t, c] = _code(
                src[first + t, head, c], inverse[at], offset[at], levels, bits == 8
            )
    if bits == 8:
        return codes.astype(np.uint8)
    half = d // 2
    return (codes[:, :half] | (codes[:, half:] << 4)).astype(np.uint8)


CASES = [
    # (bits, head_dim, group): keys (group 0) and values; 40 and 48 leave a
    # scalar rest after the vectors of 16, i8 values of 40 go element by
    # element (a group no multiple of 16).
    (8, 32, 0), (8, 40, 0), (8, 64, 0), (8, 32, 32), (8, 40, 40), (8, 48, 48),
    (4, 32, 0), (4, 40, 0), (4, 48, 0), (4, 64, 0), (4, 32, 16), (4, 64, 16),
    (4, 64, 32),
]  # fmt: skip


@pytest.mark.parametrize(("bits", "head_dim", "group"), CASES)
def test_codes_are_the_scalar_codes(bits: int, head_dim: int, group: int):
    rng = np.random.default_rng(bits * 1000 + head_dim + group)
    n, first, head = 3, 2, 1
    src = (rng.standard_normal((7, 3, head_dim)) * 4).astype(np.float32)
    scales = head_dim if group == 0 else n * (head_dim // group)
    inverse = rng.uniform(0.5, 40.0, scales).astype(np.float32)
    offset = rng.uniform(-6.0, 0.0, scales).astype(np.float32)
    if group == 0:
        # Exact halves (round half to even) and values past both clamps.
        src[first, head, :4] = (np.arange(4) + 0.5) / inverse[:4] + offset[:4]
        src[first + 1, head, 4:6] = (1e4, -1e4)
    code_bytes = head_dim * bits // 8
    dst = np.full((6, code_bytes + 9), 0xAB, np.uint8)
    encode(src, first, n, head, dst, 2, 5, inverse, offset, group, bits)
    want = expected_codes(src, first, n, head, inverse, offset, group, bits)
    np.testing.assert_array_equal(dst[2 : 2 + n, 5 : 5 + code_bytes], want)
    # Nothing outside those rows and bytes is written.
    untouched = np.ones(dst.shape, bool)
    untouched[2 : 2 + n, 5 : 5 + code_bytes] = False
    assert (dst[untouched] == 0xAB).all()


@pytest.mark.parametrize("entry", [2, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_entries_land_where_the_layout_puts_them(entry: int, masked: bool):
    rng = np.random.default_rng(entry)
    per_row, rows, total = 3, 4, 10  # the last row holds one entry
    step_bits = rng.integers(0, 1 << 16, (2, 16)).astype(np.int32)
    mask = rng.random(16) < 0.5
    dst = np.zeros((6, 20), np.uint8)
    if masked:
        entries(dst, 1, rows, 4, step_bits, per_row, entry, mask, total)
    else:
        entries_unmasked(dst, 1, rows, 4, step_bits, per_row, entry, total)
    want = np.zeros_like(dst)
    for i in range(total):
        if masked and not mask[i]:
            continue
        r, at = 1 + i // per_row, 4 + (i % per_row) * entry
        for k in range(entry // 2):
            word = int(step_bits[k, i]) & 0xFFFF
            want[r, at + 2 * k : at + 2 * k + 2] = (word & 0xFF, word >> 8)
    np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False], ids=["i8", "i4"])
def test_key_scales_read_where_the_layout_spreads_them(
    head_dim: int, block_size: int, symmetric: bool
):
    # A block's key entries run along each row's metadata bytes and on into
    # the next row: rows of one, two or four halves go eight rows at a time
    # (`band_to_f32`), rows of eight or sixteen one load a row
    # (`rows_to_f32`: i8 at block 16 and D = 128, i4 at blocks 16 and 32),
    # the others by `halves_to_f32` (eight halves a load, the rest one by
    # one); every way must read the same (scale, offset) per channel.
    rng = np.random.default_rng(block_size)
    entry = 2 if symmetric else 4
    meta_row = -(-head_dim * entry // block_size)
    meta_col = 7  # an odd column: no load is aligned
    scales = rng.uniform(0.01, 2.0, head_dim).astype(np.float16)
    minimums = rng.uniform(-3.0, 0.0, head_dim).astype(np.float16)
    pairs = np.stack([scales, minimums], axis=1)
    entries = (scales if symmetric else pairs).reshape(-1).view(np.uint8)
    block = rng.integers(0, 256, (block_size, meta_col + meta_row + 3), np.uint8)
    for j, byte in enumerate(entries):
        block[j // meta_row, meta_col + j % meta_row] = byte
    got_scales = np.full(head_dim, np.nan, np.float32)
    got_offsets = np.full(head_dim, np.nan, np.float32)
    key_meta(block, meta_col, meta_row, symmetric, got_scales, got_offsets)
    np.testing.assert_array_equal(got_scales, scales.astype(np.float32))
    want_offsets = -128.0 * scales.astype(np.float32) if symmetric else minimums
    np.testing.assert_array_equal(got_offsets, np.asarray(want_offsets, np.float32))


@pytest.mark.parametrize("width", [8, 16])
@pytest.mark.parametrize("paired", [False, True])
def test_row_halves_land_in_row_order(width: int, paired: bool):
    # Rows 3..9 of a block, halves from an odd byte on: each row's halves
    # go on where the previous row's ended (`first` on), split into even
    # and odd ones where paired; nothing else of the targets is written.
    rng = np.random.default_rng(width + paired)
    rows, start, stop, byte, first = 12, 3, 9, 5, 2
    halves = rng.uniform(-4.0, 4.0, (rows, width)).astype(np.float16)
    block = rng.integers(0, 256, (rows, byte + 2 * width + 3), np.uint8)
    block[:, byte : byte + 2 * width] = halves.view(np.uint8)
    size = first + (stop - start) * width + 4
    even = np.full(size, np.nan, np.float32)
    odd = np.full(size, np.nan, np.float32)
    row_halves(block, start, stop, byte, even, odd, first, width, paired)
    read = halves[start:stop].astype(np.float32)
    want_even = np.full(size, np.nan, np.float32)
    want_odd = np.full(size, np.nan, np.float32)
    if paired:
        count = (stop - start) * width // 2
        want_even[first : first + count] = read[:, 0::2].reshape(-1)
        want_odd[first : first + count] = read[:, 1::2].reshape(-1)
    else:
        want_even[first : first + read.size] = read.reshape(-1)
    np.testing.assert_array_equal(even, want_even)
    np.testing.assert_array_equal(odd, want_odd)


@njit(cache=True)
def scaled_rows(
    q_rows: Any, r: Any, rows: Any, scales: Any, offsets: Any, q_scaled: Any,
    biases: Any,
) -> None:  # fmt: skip
    scale_query_rows(q_rows, r, rows, scales, offsets, q_scaled, biases)  # pyright: ignore[reportCallIssue]


@pytest.mark.parametrize("head_dim", [8, 40, 64, 128])
@pytest.mark.parametrize(("r", "rows"), [(0, 1), (3, 1), (2, 4)])
def test_query_rows_scale_per_channel(head_dim: int, r: int, rows: int):
    # Rows r .. r + rows of the query: the scaled rows and the biases
    # against float64; an odd number of eight-channel vectors (8, 40) takes
    # the last vector apart from the pairs.  Rows of the targets past
    # `rows` keep what they held.
    rng = np.random.default_rng(head_dim + r)
    q_rows = rng.standard_normal((8, head_dim)).astype(np.float32)
    scales = rng.uniform(0.01, 2.0, head_dim).astype(np.float32)
    offsets = rng.uniform(-3.0, 3.0, head_dim).astype(np.float32)
    q_scaled = np.full((4, head_dim), np.nan, np.float32)
    biases = np.full(4, np.nan, np.float32)
    scaled_rows(q_rows, r, rows, scales, offsets, q_scaled, biases)
    picked = q_rows[r : r + rows].astype(np.float64)
    np.testing.assert_array_equal(q_scaled[:rows], q_rows[r : r + rows] * scales)
    np.testing.assert_allclose(biases[:rows], picked @ offsets, rtol=1e-5, atol=1e-6)
    assert np.isnan(q_scaled[rows:]).all() and np.isnan(biases[rows:]).all()
