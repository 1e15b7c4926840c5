"""Numba kernels of the quantized element types (``i8``, ``i4``): quantise on
append, dequantise on lookup, and decode one block for attention.

The scheme and the row layout are `llmir.runtime.quantization`'s; here every
function takes a block as ``uint8 [block_size, row_bytes]`` and the layout as
plain integers (`bits`, `symmetric`, `group`), so one compiled kernel serves
every head_dim and block size.

Appends are grouped into *runs*: consecutive tokens of one call that land in
one block at consecutive offsets ``[lo, hi)`` (a sequence fills its blocks
in order, and an append only writes blocks its sequence alone holds).  A run
quantises its keys per channel over the block: the rows ``[0, lo)`` already
there were quantised with the block's scales, which cover them, so when the
new keys fit those scales they are used as they are, and when a channel's
range must widen, that channel's earlier codes are requantised to the new
scale (each at most half a new step further off).  Runs are independent, so
the kernel runs them (and the heads) in parallel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange  # pyright: ignore[reportUnknownVariableType]

from llmir.runtime.cpu.codecs import f16_bits_to_f32, f32_to_f16_bits

# ---------------------------------------------------------------------------
# float16 metadata and codes inside a block


@njit(inline="always", cache=True)
def _meta_byte_pos(j: Any, meta_col: Any, meta_row: Any) -> Any:
    """(row, column) of byte `j` of a block's spread K metadata."""
    return j // meta_row, meta_col + j % meta_row


@njit(inline="always", cache=True)
def _read_u16(block: Any, r0: Any, c0: Any, r1: Any, c1: Any) -> Any:
    return np.uint16(block[r0, c0]) | (np.uint16(block[r1, c1]) << np.uint16(8))


@njit(cache=True)
def key_channel_meta(
    block: Any, c: Any, meta_col: Any, meta_row: Any, symmetric: Any
) -> Any:
    """(scale, offset) of key channel `c` of a block: keys decode as
    ``stored * scale + offset``."""
    entry = 2 if symmetric else 4
    j = c * entry
    r0, c0 = _meta_byte_pos(j, meta_col, meta_row)
    r1, c1 = _meta_byte_pos(j + 1, meta_col, meta_row)
    scale = f16_bits_to_f32(_read_u16(block, r0, c0, r1, c1))
    if symmetric:
        return scale, np.float32(-128.0) * scale
    r2, c2 = _meta_byte_pos(j + 2, meta_col, meta_row)
    r3, c3 = _meta_byte_pos(j + 3, meta_col, meta_row)
    return scale, f16_bits_to_f32(_read_u16(block, r2, c2, r3, c3))


@njit(inline="always", cache=True)
def _write_key_meta(
    block: Any,
    c: Any,
    meta_col: Any,
    meta_row: Any,
    symmetric: Any,
    s_bits: Any,
    m_bits: Any,
) -> None:
    entry = 2 if symmetric else 4
    j = c * entry
    r, col = _meta_byte_pos(j, meta_col, meta_row)
    block[r, col] = np.uint8(s_bits & 0xFF)
    r, col = _meta_byte_pos(j + 1, meta_col, meta_row)
    block[r, col] = np.uint8(s_bits >> 8)
    if not symmetric:
        r, col = _meta_byte_pos(j + 2, meta_col, meta_row)
        block[r, col] = np.uint8(m_bits & 0xFF)
        r, col = _meta_byte_pos(j + 3, meta_col, meta_row)
        block[r, col] = np.uint8(m_bits >> 8)


@njit(cache=True)
def value_group_meta(row: Any, g: Any, meta_col: Any, symmetric: Any) -> Any:
    """(scale, offset) of value group `g` of one row."""
    entry = 2 if symmetric else 4
    at = meta_col + g * entry
    scale = f16_bits_to_f32(
        np.uint16(row[at]) | (np.uint16(row[at + 1]) << np.uint16(8))
    )
    if symmetric:
        return scale, np.float32(-128.0) * scale
    offset = f16_bits_to_f32(
        np.uint16(row[at + 2]) | (np.uint16(row[at + 3]) << np.uint16(8))
    )
    return scale, offset


@njit(inline="always", cache=True)
def get_code(row: Any, base: Any, c: Any, bits: Any) -> Any:
    """The stored (unsigned) code of channel `c` in a row's codes at `base`."""
    if bits == 8:
        return np.int32(row[base + c])
    byte = np.int32(row[base + (c >> 1)])
    return (byte >> 4) if c & 1 else (byte & 0x0F)


@njit(inline="always", cache=True)
def _set_code(row: Any, base: Any, c: Any, bits: Any, code: Any) -> None:
    if bits == 8:
        row[base + c] = np.uint8(code)
        return
    at = base + (c >> 1)
    byte = np.int32(row[at])
    # The even channel is the low nibble.
    byte = (byte & 0x0F) | (code << 4) if c & 1 else (byte & 0xF0) | code
    row[at] = np.uint8(byte)


@njit(inline="always", cache=True)
def _f16_up(x: Any) -> Any:
    """The bits of the smallest float16 >= x (x >= 0, finite)."""
    bits = np.int32(f32_to_f16_bits(x))
    if f16_bits_to_f32(np.uint16(bits)) < x:
        bits += 1
    return bits


@njit(inline="always", cache=True)
def _f16_down(x: Any) -> Any:
    """The bits of the largest float16 <= x (finite)."""
    bits = np.int32(f32_to_f16_bits(x))
    if f16_bits_to_f32(np.uint16(bits)) > x:
        if bits == 0:
            bits = 0x8001  # the smallest negative subnormal
        elif bits & 0x8000:
            bits += 1  # more negative
        else:
            bits -= 1
    return bits


@njit(inline="always", cache=True)
def _quantize(x: Any, scale: Any, offset: Any, levels: Any, symmetric: Any) -> Any:
    """The stored code of value `x` (scale 0: the only value is `offset`)."""
    if scale == 0:
        return 128 if symmetric else 0
    if symmetric:
        q = np.int32(np.rint(x / scale))
        return min(max(q, -levels), levels) + 128
    q = np.int32(np.rint((x - offset) / scale))
    return min(max(q, 0), levels)


# ---------------------------------------------------------------------------
# Append: quantise runs of tokens into their blocks


@njit(inline="always", cache=True)
def _quantize_run(
    block: Any,  # uint8 [block_size, row_bytes]
    keys: Any,  # f32 [n, D] (this run's tokens, this head)
    values: Any,
    lo: Any,
    bits: Any,
    symmetric: Any,
    group: Any,
    meta_row: Any,
) -> None:
    n, head_dim = keys.shape
    code_bytes = head_dim * bits // 8
    meta_col = code_bytes
    v_codes = code_bytes + meta_row
    v_meta = v_codes + code_bytes
    levels = 127 if symmetric else (1 << bits) - 1
    for c in range(head_dim):
        new_lo = keys[0, c]
        new_hi = keys[0, c]
        for t in range(1, n):
            new_lo = min(new_lo, keys[t, c])
            new_hi = max(new_hi, keys[t, c])
        old_scale = np.float32(0.0)
        old_offset = np.float32(0.0)
        widen = True
        if lo > 0:
            old_scale, old_offset = key_channel_meta(
                block, c, meta_col, meta_row, symmetric
            )
            if symmetric:
                covered = old_scale * levels
                widen = max(-new_lo, new_hi) > covered
            else:
                covered_hi = old_offset + old_scale * levels
                widen = new_lo < old_offset or new_hi > covered_hi
        if widen:
            if symmetric:
                amax = max(-new_lo, new_hi)
                if lo > 0:
                    amax = max(amax, old_scale * levels)
                s_bits = _f16_up(amax / levels)
                m_bits = 0
                scale = f16_bits_to_f32(np.uint16(s_bits))
                offset = np.float32(-128.0) * scale
            else:
                low = new_lo
                high = new_hi
                if lo > 0:
                    low = min(low, old_offset)
                    high = max(high, old_offset + old_scale * levels)
                m_bits = _f16_down(low)
                offset = f16_bits_to_f32(np.uint16(m_bits))
                s_bits = _f16_up((high - offset) / levels)
                scale = f16_bits_to_f32(np.uint16(s_bits))
            _write_key_meta(block, c, meta_col, meta_row, symmetric, s_bits, m_bits)
            # Requantise what the block held to the wider scale.
            for t in range(lo):
                old = get_code(block[t], 0, c, bits) * old_scale + old_offset
                _set_code(
                    block[t],
                    0,
                    c,
                    bits,
                    _quantize(old, scale, offset, levels, symmetric),
                )
        else:
            scale, offset = old_scale, old_offset
        for t in range(n):
            _set_code(
                block[lo + t],
                0,
                c,
                bits,
                _quantize(keys[t, c], scale, offset, levels, symmetric),
            )
    # Values: per token, per group of `group` channels.
    entry = 2 if symmetric else 4
    for t in range(n):
        row = block[lo + t]
        for g in range(head_dim // group):
            first = g * group
            low = values[t, first]
            high = values[t, first]
            for c in range(first + 1, first + group):
                low = min(low, values[t, c])
                high = max(high, values[t, c])
            at = v_meta + g * entry
            if symmetric:
                s_bits = _f16_up(max(-low, high) / levels)
                scale = f16_bits_to_f32(np.uint16(s_bits))
                offset = np.float32(-128.0) * scale
            else:
                m_bits = _f16_down(low)
                offset = f16_bits_to_f32(np.uint16(m_bits))
                s_bits = _f16_up((high - offset) / levels)
                scale = f16_bits_to_f32(np.uint16(s_bits))
                row[at + 2] = np.uint8(m_bits & 0xFF)
                row[at + 3] = np.uint8(m_bits >> 8)
            row[at] = np.uint8(s_bits & 0xFF)
            row[at + 1] = np.uint8(s_bits >> 8)
            for c in range(first, first + group):
                _set_code(
                    row,
                    v_codes,
                    c,
                    bits,
                    _quantize(values[t, c], scale, offset, levels, symmetric),
                )


@njit(parallel=True, cache=True)
def quantize_runs(
    pool: Any,  # uint8 [L', blocks, H, block_size, row_bytes]
    keys: Any,  # f32 [L', N, H, D]
    values: Any,
    run_tokens: Any,  # int64 [runs + 1]: token index where each run starts
    run_blocks: Any,  # int64 [runs]
    run_offsets: Any,  # int64 [runs]: the slot offset of the run's first token
    bits: Any,
    symmetric: Any,
    group: Any,
    meta_row: Any,
) -> None:
    layers = keys.shape[0]
    heads = keys.shape[2]
    runs = run_blocks.shape[0]
    for item in prange(layers * runs * heads):
        h = item % heads
        rest = item // heads
        r = rest % runs
        layer = rest // runs
        start = run_tokens[r]
        stop = run_tokens[r + 1]
        _quantize_run(
            pool[layer, run_blocks[r], h],
            keys[layer, start:stop, h],
            values[layer, start:stop, h],
            run_offsets[r],
            bits,
            symmetric,
            group,
            meta_row,
        )


# ---------------------------------------------------------------------------
# Lookup and attention: dequantise


@njit(inline="always", cache=True)
def dequantize_keys(
    block: Any,
    out: Any,  # f32 [block_size, D]
    lo: Any,
    hi: Any,
    bits: Any,
    symmetric: Any,
    meta_row: Any,
    scales: Any,  # f32 [D] scratch
    offsets: Any,
) -> None:
    head_dim = out.shape[1]
    meta_col = head_dim * bits // 8
    for c in range(head_dim):
        scales[c], offsets[c] = key_channel_meta(
            block, c, meta_col, meta_row, symmetric
        )
    if bits == 8:
        for t in range(lo, hi):
            row = block[t]
            for c in range(head_dim):
                out[t, c] = np.float32(row[c]) * scales[c] + offsets[c]
    else:
        for t in range(lo, hi):
            row = block[t]
            for j in range(head_dim // 2):
                byte = np.int32(row[j])
                out[t, 2 * j] = np.float32(byte & 0x0F) * scales[2 * j] + offsets[2 * j]
                out[t, 2 * j + 1] = (
                    np.float32(byte >> 4) * scales[2 * j + 1] + offsets[2 * j + 1]
                )


@njit(inline="always", cache=True)
def dequantize_values(
    block: Any,
    out: Any,
    lo: Any,
    hi: Any,
    bits: Any,
    symmetric: Any,
    group: Any,
    meta_row: Any,
) -> None:
    head_dim = out.shape[1]
    code_bytes = head_dim * bits // 8
    v_codes = code_bytes + meta_row
    v_meta = v_codes + code_bytes
    for t in range(lo, hi):
        row = block[t]
        for g in range(head_dim // group):
            scale, offset = value_group_meta(row, g, v_meta, symmetric)
            first = g * group
            if bits == 8:
                for c in range(first, first + group):
                    out[t, c] = np.float32(row[v_codes + c]) * scale + offset
            else:
                for j in range(first // 2, (first + group) // 2):
                    byte = np.int32(row[v_codes + j])
                    out[t, 2 * j] = np.float32(byte & 0x0F) * scale + offset
                    out[t, 2 * j + 1] = np.float32(byte >> 4) * scale + offset


@njit(parallel=True, cache=True)
def dequantize_slots(
    pool: Any,  # uint8 [L', blocks, H, block_size, row_bytes]
    slots: Any,  # int64 [N]
    out_keys: Any,  # f32 [L', N, H, D]
    out_values: Any,
    block_size: Any,
    bits: Any,
    symmetric: Any,
    group: Any,
    meta_row: Any,
) -> None:
    layers, n_tok, heads, head_dim = out_keys.shape
    code_bytes = head_dim * bits // 8
    v_codes = code_bytes + meta_row
    v_meta = v_codes + code_bytes
    for item in prange(layers * n_tok * heads):
        h = item % heads
        rest = item // heads
        n = rest % n_tok
        layer = rest // n_tok
        s = slots[n]
        blk = s // block_size
        off = s - blk * block_size
        block = pool[layer, blk, h]
        row = block[off]
        for c in range(head_dim):
            scale, offset = key_channel_meta(block, c, code_bytes, meta_row, symmetric)
            out_keys[layer, n, h, c] = (
                np.float32(get_code(row, 0, c, bits)) * scale + offset
            )
        for g in range(head_dim // group):
            scale, offset = value_group_meta(row, g, v_meta, symmetric)
            for c in range(g * group, (g + 1) * group):
                out_values[layer, n, h, c] = (
                    np.float32(get_code(row, v_codes, c, bits)) * scale + offset
                )
