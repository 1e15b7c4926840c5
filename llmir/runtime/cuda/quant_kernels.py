"""CUDA kernels of the quantized element types (``i8``, ``i4``): quantise on
append, dequantise on lookup, and the key/value loaders the attention kernel
decodes blocks with.

The scheme and the row layout are `llmir.runtime.quantization`'s; the CPU
kernels (`llmir.runtime.cpu.quant_kernels`) are the model this module
follows operation for operation, in the same float types, so that both
backends store the same bytes for the same input (tested).  Two details make
that hold on a GPU too: float16 conversions are done here in integer
arithmetic, exactly (round to nearest even), and the one multiply-add of the
requantisation runs in float64, where ``code * scale`` is exact, so a fused
multiply-add rounds as the CPU's separate operations do.

One thread block quantises one run (tokens of one append that land in one
block at consecutive offsets, `quantization.AppendRuns`) of one head of one
layer: first one thread per key channel decides the channel's scale (widening
it, as on the CPU, when the new keys leave its range), then one thread per
code byte (two channels in an i4 byte) requantises the block's earlier rows
and writes the new keys' codes; values get one thread per (token, group) for
their scales and one per (token, code byte) for their codes.

This module imports numba.cuda at import time; import it only through
`llmir.runtime.cuda`.
"""

from __future__ import annotations

from functools import cache
from typing import Any, NamedTuple

import numpy as np

from llmir.runtime.cuda.codecs import bit_casts
from llmir.runtime.cuda.loader import cuda_module, simulator_enabled
from llmir.runtime.dtypes import ElementType

cuda = cuda_module()  # see cache_kernels.py: the simulator swaps this global


QUANTIZE_SHARED_FLOATS_PER_CHANNEL = 5
"""float32 words of shared memory `quantize_runs` needs per key channel."""


class QuantKernels(NamedTuple):
    quantize_runs: Any
    dequantize: Any
    load_key: Any
    """Device function ``(kv_layer, block, head, row, channel, head_dim) ->
    float32`` over a layer ``uint8 [blocks, H, B, row_bytes]``."""
    load_value: Any


@cache
def f16_conversions() -> tuple[Any, Any]:
    """Device functions (float16 bits -> float32, float32 -> float16 bits),
    exact and round-to-nearest-even, in integer arithmetic (the same on a
    GPU and in the simulator)."""
    from numba import float32, int32, uint32

    int_as_float, float_as_int = bit_casts()

    @cuda.jit(device=True, inline=True)
    def f16_to_f32(bits: Any) -> Any:
        u = uint32(bits)
        sign = (u & uint32(0x8000)) << uint32(16)
        exponent = (u >> uint32(10)) & uint32(0x1F)
        mantissa = u & uint32(0x3FF)
        if exponent == 0:  # zero or subnormal: mantissa * 2^-24, exact
            value = float32(mantissa) * float32(5.9604644775390625e-08)
            return -value if sign else value
        if exponent == 31:
            return int_as_float(
                int32(sign | uint32(0x7F800000) | (mantissa << uint32(13)))
            )
        return int_as_float(
            int32(
                sign
                | ((exponent + uint32(112)) << uint32(23))
                | (mantissa << uint32(13))
            )
        )

    @cuda.jit(device=True, inline=True)
    def f32_to_f16(x: Any) -> Any:
        u = uint32(float_as_int(float32(x)))
        sign = (u >> uint32(16)) & uint32(0x8000)
        a = u & uint32(0x7FFFFFFF)
        if a > uint32(0x7F800000):  # NaN, kept quiet
            return int32(sign | uint32(0x7E00))
        if a >= uint32(0x47800000):  # >= 65536: infinite
            return int32(sign | uint32(0x7C00))
        exponent = a >> uint32(23)
        if exponent < uint32(102):  # below half the smallest subnormal
            return int32(sign)
        if exponent < uint32(113):  # a subnormal half
            mantissa = (a & uint32(0x7FFFFF)) | uint32(0x800000)
            shift = uint32(126) - exponent
            h = mantissa >> shift
            rest = mantissa & ((uint32(1) << shift) - uint32(1))
            halfway = uint32(1) << (shift - uint32(1))
        else:
            h = ((exponent - uint32(112)) << uint32(10)) | (
                (a >> uint32(13)) & uint32(0x3FF)
            )
            rest = a & uint32(0x1FFF)
            halfway = uint32(0x1000)
        if rest > halfway or (rest == halfway and (h & uint32(1))):
            h += uint32(1)  # a carry into the exponent is the right rounding
        return int32(sign | h)

    return f16_to_f32, f32_to_f16


def _rints() -> tuple[Any, Any]:
    """Round half to even, for float32 and float64 (numpy's ``rint``, which
    the CPU kernels use): libdevice on a GPU, numpy in the simulator."""
    if simulator_enabled():
        return np.rint, np.rint
    return cuda.libdevice.rintf, cuda.libdevice.rint


@cache
def quant_kernels(element: ElementType) -> QuantKernels:
    """The kernels and loaders of one quantized element type."""
    from numba import float32, float64, int32, uint8

    quant = element.quant
    assert quant is not None
    bits = quant.bits
    symmetric = quant.symmetric
    entry = quant.entry_bytes
    value_group = quant.value_group or 0  # 0: the whole row
    levels = float32(127 if symmetric else (1 << bits) - 1)
    f16_to_f32, f32_to_f16 = f16_conversions()
    rint32, rint64 = _rints()

    @cuda.jit(device=True, inline=True)
    def read_u16(block: Any, j: Any, meta_col: Any, meta_row: Any) -> Any:
        """Bytes j and j + 1 of a block's spread K metadata, little endian."""
        r0 = j // meta_row
        r1 = (j + 1) // meta_row
        low = int32(block[r0, meta_col + j - r0 * meta_row])
        high = int32(block[r1, meta_col + j + 1 - r1 * meta_row])
        return low | (high << 8)

    @cuda.jit(device=True, inline=True)
    def write_u16(block: Any, j: Any, meta_col: Any, meta_row: Any, value: Any) -> None:
        r0 = j // meta_row
        r1 = (j + 1) // meta_row
        block[r0, meta_col + j - r0 * meta_row] = uint8(value & 0xFF)
        block[r1, meta_col + j + 1 - r1 * meta_row] = uint8(value >> 8)

    @cuda.jit(device=True, inline=True)
    def key_meta(block: Any, c: Any, meta_col: Any, meta_row: Any) -> Any:
        """(scale, offset) of key channel `c`: keys decode as ``stored *
        scale + offset``."""
        scale = f16_to_f32(read_u16(block, c * entry, meta_col, meta_row))
        if symmetric:
            return scale, float32(-128.0) * scale
        return scale, f16_to_f32(read_u16(block, c * entry + 2, meta_col, meta_row))

    @cuda.jit(device=True, inline=True)
    def value_meta(row: Any, g: Any, meta_col: Any) -> Any:
        at = meta_col + g * entry
        scale = f16_to_f32(int32(row[at]) | (int32(row[at + 1]) << 8))
        if symmetric:
            return scale, float32(-128.0) * scale
        return scale, f16_to_f32(int32(row[at + 2]) | (int32(row[at + 3]) << 8))

    @cuda.jit(device=True, inline=True)
    def get_code(row: Any, base: Any, c: Any, half: Any) -> Any:
        if bits == 8:
            return int32(row[base + c])
        if c < half:
            return int32(row[base + c]) & 0x0F
        return int32(row[base + c - half]) >> 4

    @cuda.jit(device=True, inline=True)
    def f16_up(x: Any) -> Any:
        """The bits of the smallest float16 >= x (x >= 0, finite)."""
        h = f32_to_f16(x)
        if f16_to_f32(h) < x:
            h += 1
        return h

    @cuda.jit(device=True, inline=True)
    def f16_down(x: Any) -> Any:
        """The bits of the largest float16 <= x (finite)."""
        h = f32_to_f16(x)
        if f16_to_f32(h) > x:
            if h == 0:
                h = 0x8001
            elif h & 0x8000:
                h += 1
            else:
                h -= 1
        return h

    @cuda.jit(device=True, inline=True)
    def step_bits(low: Any, high: Any) -> Any:
        if symmetric:
            return f16_up(max(-low, high) / levels), 0
        m_bits = f16_down(low)
        return f16_up((high - f16_to_f32(m_bits)) / levels), m_bits

    @cuda.jit(device=True, inline=True)
    def inverse(scale: Any) -> Any:
        return float32(1.0) / scale if scale > 0 else float32(0.0)

    @cuda.jit(device=True, inline=True)
    def code_of(x: Any, inv: Any, offset: Any) -> Any:
        """The stored code of float32 `x` (the CPU's ``_code``, type for
        type)."""
        if symmetric:
            return int32(min(max(rint32(x * inv), -levels), levels)) + 128
        return int32(min(max(rint32((x - offset) * inv), float32(0.0)), levels))

    @cuda.jit(device=True, inline=True)
    def requantized(
        code: Any, old_scale: Any, old_offset: Any, inv: Any, offset: Any
    ) -> Any:
        """An earlier code of a widened channel at its new scale: decoded in
        float64 (exact product, so fused or not the sum rounds once)."""
        old = float64(code) * float64(old_scale) + float64(old_offset)
        if symmetric:
            return int32(min(max(rint64(old * inv), -levels), levels)) + 128
        return int32(min(max(rint64((old - offset) * inv), float64(0.0)), levels))

    @cuda.jit(device=True, inline=True)
    def block_rows_meta(kv_layer: Any, head_dim: Any) -> Any:
        """(code bytes, K metadata bytes per row) of a layer's blocks."""
        block_size = kv_layer.shape[2]
        return head_dim * bits // 8, (head_dim * entry + block_size - 1) // block_size

    @cuda.jit(device=True, inline=True)
    def load_key(
        kv_layer: Any, block: Any, head: Any, j: Any, d: Any, head_dim: Any
    ) -> Any:
        rows = kv_layer[block, head]
        code_bytes, meta_row = block_rows_meta(kv_layer, head_dim)
        scale, offset = key_meta(rows, d, code_bytes, meta_row)
        return float32(get_code(rows[j], 0, d, head_dim // 2)) * scale + offset

    @cuda.jit(device=True, inline=True)
    def load_value(
        kv_layer: Any, block: Any, head: Any, j: Any, d: Any, head_dim: Any
    ) -> Any:
        row = kv_layer[block, head, j]
        code_bytes, meta_row = block_rows_meta(kv_layer, head_dim)
        group = value_group if value_group else head_dim
        scale, offset = value_meta(row, d // group, 2 * code_bytes + meta_row)
        return (
            float32(get_code(row, code_bytes + meta_row, d, head_dim // 2)) * scale
            + offset
        )

    @cuda.jit
    def quantize_runs(
        pool: Any,  # uint8 [L', blocks, H, B, row_bytes]
        keys: Any,  # float32 or float16 [L', N, H, D]
        values: Any,
        run_tokens: Any,  # int64 [runs + 1]
        run_blocks: Any,  # int64 [runs]
        run_offsets: Any,  # int64 [runs]
    ) -> None:
        """Grid (runs, H, L'); dynamic shared memory
        QUANTIZE_SHARED_FLOATS_PER_CHANNEL * D float32."""
        r = cuda.blockIdx.x
        h = cuda.blockIdx.y
        layer = cuda.blockIdx.z
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x
        head_dim = keys.shape[3]
        half = head_dim // 2
        start = run_tokens[r]
        n = run_tokens[r + 1] - start
        lo = run_offsets[r]
        block = pool[layer, run_blocks[r], h]
        code_bytes, meta_row = block_rows_meta(pool[layer], head_dim)
        v_codes = code_bytes + meta_row
        v_meta = v_codes + code_bytes
        group = value_group if value_group else head_dim
        groups = head_dim // group

        smem = cuda.shared.array(0, dtype=float32)
        scale = smem[0:head_dim]
        offset = smem[head_dim : 2 * head_dim]
        old_scale = smem[2 * head_dim : 3 * head_dim]  # -1: channel kept
        old_offset = smem[3 * head_dim : 4 * head_dim]
        inv = smem[4 * head_dim : 5 * head_dim]

        # Keys, per channel: the block's scale, widened if the run needs it.
        for c in range(tid, head_dim, nthreads):
            new_lo = float32(keys[layer, start, h, c])
            new_hi = new_lo
            for t in range(1, n):
                x = float32(keys[layer, start + t, h, c])
                new_lo = min(new_lo, x)
                new_hi = max(new_hi, x)
            kept_scale = float32(0.0)
            kept_offset = float32(0.0)
            wider = True
            low = new_lo
            high = new_hi
            if lo > 0:
                kept_scale, kept_offset = key_meta(block, c, code_bytes, meta_row)
                if symmetric:
                    old_hi = kept_scale * levels
                    old_lo = -old_hi
                else:
                    old_lo = kept_offset
                    old_hi = kept_offset + kept_scale * levels
                wider = new_lo < old_lo or new_hi > old_hi
                low = min(new_lo, old_lo)
                high = max(new_hi, old_hi)
            if wider:
                s_bits, m_bits = step_bits(low, high)
                write_u16(block, c * entry, code_bytes, meta_row, s_bits)
                scale[c] = f16_to_f32(s_bits)
                if symmetric:
                    offset[c] = float32(-128.0) * scale[c]
                else:
                    write_u16(block, c * entry + 2, code_bytes, meta_row, m_bits)
                    offset[c] = f16_to_f32(m_bits)
                old_scale[c] = kept_scale if lo > 0 else float32(-1.0)
                old_offset[c] = kept_offset
            else:
                scale[c] = kept_scale
                offset[c] = kept_offset
                old_scale[c] = float32(-1.0)
            inv[c] = inverse(scale[c])
        cuda.syncthreads()

        # Keys, per code byte: requantise what the block held, then the run.
        for j in range(tid, code_bytes, nthreads):
            if bits == 8:
                if old_scale[j] >= 0:
                    for t in range(lo):
                        code = requantized(
                            int32(block[t, j]), old_scale[j], old_offset[j], inv[j],
                            offset[j],
                        )  # fmt: skip
                        block[t, j] = uint8(code)
                for t in range(n):
                    x = float32(keys[layer, start + t, h, j])
                    block[lo + t, j] = uint8(code_of(x, inv[j], offset[j]))
            else:
                k = j + half
                if old_scale[j] >= 0 or old_scale[k] >= 0:
                    for t in range(lo):
                        low_code = int32(block[t, j]) & 0x0F
                        high_code = int32(block[t, j]) >> 4
                        if old_scale[j] >= 0:
                            low_code = requantized(
                                low_code, old_scale[j], old_offset[j], inv[j], offset[j]
                            )
                        if old_scale[k] >= 0:
                            high_code = requantized(
                                high_code,
                                old_scale[k],
                                old_offset[k],
                                inv[k],
                                offset[k],
                            )
                        block[t, j] = uint8(low_code | (high_code << 4))
                for t in range(n):
                    low_code = code_of(
                        float32(keys[layer, start + t, h, j]), inv[j], offset[j]
                    )
                    high_code = code_of(
                        float32(keys[layer, start + t, h, k]), inv[k], offset[k]
                    )
                    block[lo + t, j] = uint8(low_code | (high_code << 4))

        # Values: each (token, group)'s scale, then each (token, byte)'s codes.
        for i in range(tid, n * groups, nthreads):
            t = i // groups
            g = i - t * groups
            first = g * group
            low = float32(values[layer, start + t, h, first])
            high = low
            for c in range(first + 1, first + group):
                x = float32(values[layer, start + t, h, c])
                low = min(low, x)
                high = max(high, x)
            s_bits, m_bits = step_bits(low, high)
            row = block[lo + t]
            at = v_meta + g * entry
            row[at] = uint8(s_bits & 0xFF)
            row[at + 1] = uint8(s_bits >> 8)
            if not symmetric:
                row[at + 2] = uint8(m_bits & 0xFF)
                row[at + 3] = uint8(m_bits >> 8)
        cuda.syncthreads()
        for i in range(tid, n * code_bytes, nthreads):
            t = i // code_bytes
            j = i - t * code_bytes
            row = block[lo + t]
            step, minimum = value_meta(row, j // group, v_meta)
            low_code = code_of(
                float32(values[layer, start + t, h, j]), inverse(step), minimum
            )
            if bits == 8:
                row[v_codes + j] = uint8(low_code)
            else:
                k = j + half
                step, minimum = value_meta(row, k // group, v_meta)
                high_code = code_of(
                    float32(values[layer, start + t, h, k]), inverse(step), minimum
                )
                row[v_codes + j] = uint8(low_code | (high_code << 4))

    @cuda.jit
    def dequantize(
        kv_layer: Any, block_tables: Any, seq_lens: Any, out_keys: Any, out_values: Any
    ) -> None:
        """Grid (max_len, batch): the first seq_lens[b] tokens of each
        sequence into float32 out_keys/out_values (batch, max_len, H, D);
        zeros past a sequence's end and in holes."""
        p = cuda.blockIdx.x
        b = cuda.blockIdx.y
        num_heads = kv_layer.shape[1]
        block_size = kv_layer.shape[2]
        head_dim = out_keys.shape[3]
        logical = p // block_size
        physical = -1
        if p < seq_lens[b]:
            physical = block_tables[b, logical]
        offset = p - logical * block_size
        for i in range(cuda.threadIdx.x, num_heads * head_dim, cuda.blockDim.x):
            h = i // head_dim
            d = i - h * head_dim
            if physical >= 0:
                out_keys[b, p, h, d] = load_key(
                    kv_layer, physical, h, offset, d, head_dim
                )
                out_values[b, p, h, d] = load_value(
                    kv_layer, physical, h, offset, d, head_dim
                )
            else:
                out_keys[b, p, h, d] = 0.0
                out_values[b, p, h, d] = 0.0

    return QuantKernels(quantize_runs, dequantize, load_key, load_value)
