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
from llmir.runtime.cpu.quant_simd import encode_rows, write_entries
from llmir.runtime.cpu.simd import (
    band_to_f32,
    halves_to_f32,
    rows_to_f32,
    token_group_ranges,
    token_ranges,
)

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
    meta_col: Any,
    meta_row: Any,
    symmetric: Any,
    wider: Any,  # bool [D]: the channels to write
    step_bits: Any,  # int32 [2, D]: float16 bits of (scale, minimum)
) -> Any:
    """Write the key metadata of the `wider` channels; returns how many."""
    head_dim = wider.shape[0]
    entry = 2 if symmetric else 4
    written = 0
    if meta_row % entry:
        for c in range(head_dim):
            if wider[c]:
                written += 1
                j = c * entry
                for k in range(entry):
                    r, col = _meta_byte_pos(j + k, meta_col, meta_row)
                    word = step_bits[0, c] if k < 2 else step_bits[1, c]
                    block[r, col] = np.uint8((word >> (8 * (k % 2))) & 0xFF)
        return written
    # Whole entries per row, as in every power-of-two block up to 64: row
    # by row, with no division per channel (those took a third of an i8
    # append), stored 16 bits at a time.
    per_row = meta_row // entry
    rows = -(-head_dim // per_row)
    write_entries(block, 0, rows, meta_col, step_bits, per_row, entry, wider, head_dim)
    for c in range(head_dim):
        written += np.int64(wider[c])
    return written


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
def load_key_meta(
    block: Any, meta_col: Any, meta_row: Any, symmetric: Any, scales: Any, offsets: Any
) -> None:
    """Every channel's (scale, offset) of a block into `scales`/`offsets`,
    walking the rows, eight halves per vector load (`halves_to_f32`) where
    whole entries fit in a row, as in every layout of a power-of-two block:
    the 128 channels of a hot block took 57 ns (i8) and 103 ns (i4), against
    257 and 337 ns in the scalar loop this replaced.  Rows of one, two or
    four halves (large blocks) go eight rows per vector (`band_to_f32`):
    one half at a time they cost a hot MHA decode at block 64 about 2 ns
    per token (i8 18.7-19.4 -> 17.1 ns, i4 21.2-21.5 -> 18.8).  Rows of
    eight or sixteen (block 16) go one load a row (`rows_to_f32`).
    Symmetric (i8) offsets are ``-128 * scale``, computed, not stored."""
    head_dim = scales.shape[0]
    entry = 2 if symmetric else 4
    if meta_row % entry:
        for c in range(head_dim):
            scales[c], offsets[c] = key_channel_meta(
                block, c, meta_col, meta_row, symmetric
            )
        return
    per_row = meta_row // entry
    stride = 1 if symmetric else 2
    # Whole rows of entries, then the rest in the next row.
    full = head_dim // per_row
    rest = head_dim - full * per_row
    tail = full * per_row
    halves = meta_row // 2
    if rest == 0 and full % 8 == 0 and meta_row in (2, 4, 8):
        # One, two or four halves a row (D = 128: i8 blocks of 32 to 128,
        # i4 of 64 and 128): eight rows per vector, where the loop below
        # went one half at a time (meta_row 2 holds no whole i4 entry).
        band_to_f32(block, full, meta_col, scales, offsets, halves, not symmetric)
    elif rest == 0 and meta_row in (16, 32):
        # Eight or sixteen halves a row (D = 128: i8 and i4 blocks of 16,
        # i4 of 32): one load a row, where the loops below ran one or two
        # vectors and an empty remainder per row.
        rows_to_f32(block, 0, full, meta_col, scales, offsets, 0, halves, not symmetric)
    else:
        halves_to_f32(block, 0, full, meta_col, stride, scales, 0, per_row, per_row)
        halves_to_f32(block, full, full + 1, meta_col, stride, scales, tail, 0, rest)
        if not symmetric:
            halves_to_f32(block, 0, full, meta_col + 2, 2, offsets, 0, per_row, per_row)
            halves_to_f32(
                block, full, full + 1, meta_col + 2, 2, offsets, tail, 0, rest
            )
    if symmetric:
        for c in range(head_dim):
            offsets[c] = np.float32(-128.0) * scales[c]


@njit(inline="always", cache=True)
def get_code(row: Any, base: Any, c: Any, bits: Any, half: Any) -> Any:
    """The stored (unsigned) code of channel `c` in a row's codes at `base`
    (i4: channel ``c < half`` in the low nibble of byte ``c``, channel
    ``c >= half`` in the high nibble of byte ``c - half``)."""
    if bits == 8:
        return np.int32(row[base + c])
    if c < half:
        return np.int32(row[base + c]) & 0x0F
    return np.int32(row[base + c - half]) >> 4


@njit(inline="always", cache=True)
def _set_code(row: Any, base: Any, c: Any, bits: Any, code: Any, half: Any) -> None:
    if bits == 8:
        row[base + c] = np.uint8(code)
        return
    if c < half:
        at = base + c
        row[at] = np.uint8((np.int32(row[at]) & 0xF0) | code)
    else:
        at = base + c - half
        row[at] = np.uint8((np.int32(row[at]) & 0x0F) | (code << 4))


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
        # 0x8001: the smallest negative subnormal; a negative one grows
        # more negative with its bits.
        further = bits + 1 if bits & 0x8000 else bits - 1
        bits = 0x8001 if bits == 0 else further
    return bits


@njit(inline="always", cache=True)
def _code(x: Any, inv: Any, offset: Any, levels: Any, symmetric: Any) -> Any:
    """The stored code of `x` for step ``1 / inv`` (inv 0: a zero step).
    `levels` is float32, like every operand here: the CUDA kernels repeat
    this arithmetic type for type and give the same bytes."""
    # Clamps as comparisons: Numba's min and max keep loops from
    # vectorizing (the values are finite, so the result is the same).
    if symmetric:
        q = np.rint(x * inv)
        q = q if q > -levels else -levels
        return np.int32(q if q < levels else levels) + 128
    q = np.rint((x - offset) * inv)
    q = q if q > 0.0 else np.float32(0.0)
    return np.int32(q if q < levels else levels)


@njit(inline="always", cache=True)
def _step_bits(low: Any, high: Any, levels: Any, symmetric: Any) -> Any:
    """float16 bits of (scale, minimum) covering ``[low, high]`` (float32,
    as `levels`): the scale rounded up and the minimum down, so every value
    stays in range."""
    if symmetric:
        # max(-low, high), as a select that vectorizes (Numba's max does not).
        top = -low if -low >= high else high
        return _f16_up(top / levels), 0
    m_bits = _f16_down(low)
    offset = f16_bits_to_f32(np.uint16(m_bits))
    return _f16_up((high - offset) / levels), m_bits


@njit(inline="always", cache=True)
def _decoded(bits16: Any) -> Any:
    return f16_bits_to_f32(np.uint16(bits16))


@njit(inline="always", cache=True)
def _inverse(scale: Any) -> Any:
    return np.float32(1.0) / scale if scale > 0 else np.float32(0.0)


@njit(inline="always", cache=True)
def _quantize_run(
    block: Any,  # uint8 [block_size, row_bytes]
    keys: Any,  # f32 [N, H, D]: one layer's appended keys
    values: Any,
    start: Any,  # this run's first token in `keys`
    n: Any,  # its number of tokens
    h: Any,  # the head
    lo: Any,
    bits: Any,
    symmetric: Any,
    group: Any,
    meta_row: Any,
    new_lo: Any,  # the scratch of `_scratch`
    new_hi: Any,
    scale: Any,
    offset: Any,
    old_scale: Any,
    old_offset: Any,
    lows: Any,
    highs: Any,
    step_bits: Any,
    wider: Any,
) -> None:
    head_dim = keys.shape[2]
    code_bytes = head_dim * bits // 8
    meta_col = code_bytes
    v_codes = code_bytes + meta_row
    v_meta = v_codes + code_bytes
    levels = np.float32(127 if symmetric else (1 << bits) - 1)
    half = head_dim // 2
    # The new keys' range per channel.
    token_ranges(keys, start, n, h, new_lo, new_hi)
    # Each channel's range widened to what the block's codes cover, and
    # whether the new keys fall outside it.  These loops and the next are
    # branch-free so that LLVM vectorizes them (one channel at a time, they
    # took 10 ns a channel: a quarter of an i8 append).
    if lo > 0:
        load_key_meta(block, meta_col, meta_row, symmetric, old_scale, old_offset)
        for c in range(head_dim):
            if symmetric:
                old_hi = old_scale[c] * levels
                old_lo = -old_hi
            else:
                old_lo = old_offset[c]
                old_hi = old_offset[c] + old_scale[c] * levels
            low, high = new_lo[c], new_hi[c]
            wider[c] = (low < old_lo) | (high > old_hi)
            new_lo[c] = low if low <= old_lo else old_lo
            new_hi[c] = high if high >= old_hi else old_hi
    else:
        wider[:] = True
    # The widened channels' float16 steps; the others keep theirs.
    for c in range(head_dim):
        s_bits, m_bits = _step_bits(new_lo[c], new_hi[c], levels, symmetric)
        step_bits[0, c], step_bits[1, c] = s_bits, m_bits
        new_scale = _decoded(s_bits)
        new_offset = np.float32(-128.0) * new_scale if symmetric else _decoded(m_bits)
        scale[c] = new_scale if wider[c] else old_scale[c]
        offset[c] = new_offset if wider[c] else old_offset[c]
    widened = _write_key_meta(block, meta_col, meta_row, symmetric, wider, step_bits)
    if lo > 0 and widened:
        # Requantise what the block held, in the widened channels.
        for t in range(lo):
            row = block[t]
            for c in range(head_dim):
                if wider[c]:
                    # In float64, where code * scale is exact: a fused
                    # multiply-add (as a GPU may use) rounds the same.
                    old = np.float64(get_code(row, 0, c, bits, half)) * np.float64(
                        old_scale[c]
                    ) + np.float64(old_offset[c])
                    code = _code(old, _inverse(scale[c]), offset[c], levels, symmetric)
                    _set_code(row, 0, c, bits, code, half)
    # The new keys: inverse steps once, then whole rows.
    inverse = old_offset  # free again
    for c in range(head_dim):
        inverse[c] = _inverse(scale[c])
    encode_rows(keys, start, n, h, block, lo, 0, inverse, offset, 0, bits)
    # Values: per token, per group of `group` channels.  The ranges of all
    # the run's groups, then their steps in one loop across groups and
    # tokens (one that LLVM vectorizes: per token, eight i4 groups were too
    # few), then the run's metadata entries, then its codes.
    entry = 2 if symmetric else 4
    groups = head_dim // group
    count = n * groups
    token_group_ranges(values, start, n, h, group, lows, highs)
    for i in range(count):
        s_bits, m_bits = _step_bits(lows[i], highs[i], levels, symmetric)
        step_bits[0, i], step_bits[1, i] = s_bits, m_bits
        lows[i] = _inverse(_decoded(s_bits))
        highs[i] = np.float32(0.0) if symmetric else _decoded(m_bits)
    write_entries(block, lo, n, v_meta, step_bits, groups, entry, None, count)
    encode_rows(values, start, n, h, block, lo, v_codes, lows, highs, group, bits)


@njit(inline="always", cache=True)
def _scratch(head_dim: Any, width: Any) -> Any:
    """One worker's scratch: six float32 [D] (the keys' new range, scales,
    offsets, earlier scales and offsets), the value groups' float32 lows
    and highs [W], their int32 float16 steps [2, W], and a bool [D], with
    W >= D and >= block_size * groups.  Whole arrays, made once per chunk
    of items, not views of one made per item: each view is an atomic
    reference count, a locked instruction that waits for the pending
    stores to the pool (perf, one thread, i8 at block 16: reference counts
    took a third of the samples of a cold append, a sixth of a hot one)."""
    return (
        np.empty(head_dim, np.float32),
        np.empty(head_dim, np.float32),
        np.empty(head_dim, np.float32),
        np.empty(head_dim, np.float32),
        np.empty(head_dim, np.float32),
        np.empty(head_dim, np.float32),
        np.empty(width, np.float32),
        np.empty(width, np.float32),
        np.empty((2, width), np.int32),
        np.empty(head_dim, np.bool_),
    )


_CHUNKS = 256
"""Parallel chunks of an append's (run, head) items: enough to balance any
thread count, few enough that each allocates its scratch once."""


@njit(parallel=True, cache=True, error_model="numpy")
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
    head_dim = keys.shape[3]
    width = max(head_dim, pool.shape[3] * (head_dim // group))
    items = layers * runs * heads
    chunks = min(items, _CHUNKS)
    for chunk in prange(chunks):
        s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 = _scratch(head_dim, width)
        for item in range(chunk * items // chunks, (chunk + 1) * items // chunks):
            h = item % heads
            rest = item // heads
            r = rest % runs
            layer = rest // runs
            start = run_tokens[r]
            _quantize_run(
                pool[layer, run_blocks[r], h],
                keys[layer],
                values[layer],
                start,
                run_tokens[r + 1] - start,
                h,
                run_offsets[r],
                bits,
                symmetric,
                group,
                meta_row,
                s0, s1, s2, s3, s4, s5, s6, s7, s8, s9,
            )  # fmt: skip


# ---------------------------------------------------------------------------
# Lookup and attention: dequantise


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
        scales = out_keys[layer, n, h]  # the scales first, then the keys
        offsets = np.empty(head_dim, np.float32)
        load_key_meta(block, code_bytes, meta_row, symmetric, scales, offsets)
        for c in range(head_dim):
            code = np.float32(get_code(row, 0, c, bits, head_dim // 2))
            out_keys[layer, n, h, c] = code * scales[c] + offsets[c]
        for g in range(head_dim // group):
            scale, offset = value_group_meta(row, g, v_meta, symmetric)
            for c in range(g * group, (g + 1) * group):
                out_values[layer, n, h, c] = (
                    np.float32(get_code(row, v_codes, c, bits, head_dim // 2)) * scale
                    + offset
                )


@njit(inline="always", cache=True)
def decode_block_rows(
    block: Any,  # uint8 [block_size, row_bytes]
    lo: Any,
    hi: Any,
    key_scales: Any,  # f32 [D], from load_key_meta
    key_offsets: Any,
    keys_out: Any,  # f32 [block_size, D]
    values_out: Any,
    bits: Any,
    group: Any,
    meta_row: Any,
) -> None:
    """Rows ``lo:hi`` of a block decoded to float32 keys and values, as
    `dequantize_slots` decodes them, in loops LLVM vectorizes (the attention
    kernel decodes a block once for all the query rows that share it)."""
    head_dim = keys_out.shape[1]
    half = head_dim // 2
    code_bytes = head_dim * bits // 8
    v_codes = code_bytes + meta_row
    v_meta = v_codes + code_bytes
    symmetric = bits == 8
    for t in range(lo, hi):
        row = block[t]
        keys = keys_out[t]
        values = values_out[t]
        if bits == 8:
            codes = row[:head_dim]
            for c in range(head_dim):
                keys[c] = np.float32(codes[c]) * key_scales[c] + key_offsets[c]
            scale, offset = value_group_meta(row, 0, v_meta, symmetric)
            codes = row[v_codes : v_codes + head_dim]
            for c in range(head_dim):
                values[c] = np.float32(codes[c]) * scale + offset
            continue
        codes = row[:half]
        low_keys = keys[:half]
        high_keys = keys[half:]
        low_scales = key_scales[:half]
        high_scales = key_scales[half:]
        low_offsets = key_offsets[:half]
        high_offsets = key_offsets[half:]
        for j in range(half):
            byte = np.int32(codes[j])
            low_keys[j] = np.float32(byte & 0x0F) * low_scales[j] + low_offsets[j]
            high_keys[j] = np.float32(byte >> 4) * high_scales[j] + high_offsets[j]
        half_groups = half // group
        for g in range(half_groups):
            low_scale, low_offset = value_group_meta(row, g, v_meta, symmetric)
            high_scale, high_offset = value_group_meta(
                row, g + half_groups, v_meta, symmetric
            )
            first = g * group
            codes = row[v_codes + first : v_codes + first + group]
            low_values = values[first : first + group]
            high_values = values[half + first : half + first + group]
            for j in range(group):
                byte = np.int32(codes[j])
                low_values[j] = np.float32(byte & 0x0F) * low_scale + low_offset
                high_values[j] = np.float32(byte >> 4) * high_scale + high_offset
