"""CUDA paged-attention kernels: decode (optionally split over the context,
flash-decoding style, with a merge kernel) and prefill (Tq > 1, causal).

One thread block serves one (sequence, kv head, query tile[, context split]).
The G = num_q_heads / num_kv_heads query heads that share the kv head (GQA)
are handled together, so each K/V block is read from memory once per kv head
rather than once per query head.  A block's *rows* are (query token, query
head in group) pairs: ``q_tile * G`` of them.  Decode is the case Tq == 1.

Per KV block of the sequence (a tile of ``block_size`` tokens):

1. stage the tile's keys (decoded to float32 by `block_loaders`: a quantized
   block with its scales) in shared memory, rows padded
   by one element so the strided dot-product reads hit distinct banks;
2. ``P`` threads per (row, token) pair each sum a strided part of q . k, then
   one thread per pair adds the parts (the simulator has no warp shuffles, so
   the reduction goes through shared memory);
3. online softmax, one thread per row: new running max, rescale factor, and
   the tile's exponentials and their sum;
4. one thread per head dimension rescales its accumulators and adds
   ``p * v`` for the tile's values, read straight from the pool (coalesced
   along the head dimension).

Semantics are those of `llmir.runtime.attention`: query token ``t`` of a
sequence of length ``L`` (its last ``Tq`` tokens are the new ones) sits at
position ``pos = L - Tq + t`` and sees key position ``k < L`` when ``k <= pos``
(if causal) and ``k > pos - window`` or ``k < sinks`` (if window > 0);
logits are
``scale * q.k``, soft-capped as ``cap * tanh(logit / cap)`` when cap > 0.  A
row that sees no key (an empty sequence, or a padding query at a negative
position) yields zeros.

The query is pre-multiplied by ``scale`` when staged.  Outputs are float32.
Split-context launches (decode only) write each split's normalised partial
output with its running max and sum of exponentials; `merge_splits` combines
them exactly.

This module imports numba.cuda at import time; import it only through
`llmir.runtime.cuda`.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any, NamedTuple

import numpy as np

from llmir.runtime.cuda.codecs import codec
from llmir.runtime.cuda.loader import cuda_module
from llmir.runtime.cuda.quant_kernels import quant_kernels
from llmir.runtime.dtypes import ElementType
from llmir.runtime.geometry import KEY, VALUE, layer_block_size_axis

cuda = cuda_module()  # see cache_kernels.py: the simulator swaps this global

NEG_INF = np.float32(-np.inf)
"""float32, so that running maxima and scores never widen to float64."""


def shared_floats(rows: int, block_size: int, head_dim: int, parts: int) -> int:
    """Number of float32 words of dynamic shared memory one block needs."""
    return (
        rows * head_dim  # scaled queries
        + block_size * (head_dim + 1)  # key tile, padded rows
        + rows * block_size * parts  # partial dot products
        + rows * block_size  # scores, then probabilities
        + rows * head_dim  # output accumulators
        + 3 * rows  # running max, running sum, rescale factor
    )


@cache
def block_loaders(element: ElementType) -> tuple[Any, Any]:
    """Device functions ``(kv_layer, block, head, row, channel, head_dim) ->
    float32`` reading one key and one value of a layer of the pool."""
    if element.quant is not None:
        kernels = quant_kernels(element)
        return kernels.load_key, kernels.load_value
    load = codec(element).load

    @cuda.jit(device=True, inline=True)
    def load_key(kv_layer: Any, block: Any, head: Any, j: Any, d: Any, _: Any) -> Any:
        return load(kv_layer[block, head, KEY, j, d])

    @cuda.jit(device=True, inline=True)
    def load_value(kv_layer: Any, block: Any, head: Any, j: Any, d: Any, _: Any) -> Any:
        return load(kv_layer[block, head, VALUE, j, d])

    return load_key, load_value


class AttentionKernels(NamedTuple):
    attention: Any
    merge_splits: Any


@cache
def attention_kernels(element: ElementType) -> AttentionKernels:
    """The attention kernels specialised to one element type."""
    load_key, load_value = block_loaders(element)
    block_size_axis = layer_block_size_axis(element.quant is not None)
    from numba import float32

    @cuda.jit
    def attention(
        q: Any,
        kv_layer: Any,
        block_tables: Any,
        seq_lens: Any,
        scale: Any,
        q_tile: Any,
        parts: Any,
        blocks_per_split: Any,
        causal: Any,
        window: Any,
        sinks: Any,
        soft_cap: Any,
        out: Any,
        part_out: Any,
        part_max: Any,
        part_sum: Any,
        block_mass: Any,
        mass_parts: Any,
    ) -> None:
        """Grid (batch * num_q_tiles, num_kv_heads, num_splits): the long
        axis on x, the only one not limited to 65535 blocks.

        q, out: float32 (batch, Tq, num_q_heads, D).  With more than one split
        (Tq must be 1) the results go to part_out (batch, num_q_heads, splits,
        D), part_max and part_sum (batch, num_q_heads, splits) instead.

        block_mass (batch, num_kv_heads, width), unless empty, receives the
        attention mass of each logical block (one split and one query tile
        per sequence: the launcher sees to it); mass_parts (2, batch,
        num_kv_heads, rows, width), zeroed, holds each block's sum of
        exponentials and the running max it is relative to, per row.
        """
        kv_head = cuda.blockIdx.y
        num_q_tiles = (q.shape[1] + q_tile - 1) // q_tile
        b = cuda.blockIdx.x // num_q_tiles
        tile = cuda.blockIdx.x - b * num_q_tiles
        split = cuda.blockIdx.z
        num_splits = cuda.gridDim.z
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x

        num_new = q.shape[1]
        num_q_heads = q.shape[2]
        head_dim = q.shape[3]
        block_size = kv_layer.shape[block_size_axis]
        group = num_q_heads // kv_layer.shape[1]
        rows = q_tile * group
        padded = head_dim + 1
        seq_len = seq_lens[b]
        first_t = tile * q_tile

        smem = cuda.shared.array(0, dtype=float32)
        s_q = smem[0 : rows * head_dim]
        base = rows * head_dim
        s_k = smem[base : base + block_size * padded]
        base += block_size * padded
        s_part = smem[base : base + rows * block_size * parts]
        base += rows * block_size * parts
        s_p = smem[base : base + rows * block_size]
        base += rows * block_size
        s_acc = smem[base : base + rows * head_dim]
        base += rows * head_dim
        s_max = smem[base : base + rows]
        s_sum = smem[base + rows : base + 2 * rows]
        s_alpha = smem[base + 2 * rows : base + 3 * rows]

        for i in range(tid, rows * head_dim, nthreads):
            r = i // head_dim
            d = i - r * head_dim
            qt = r // group
            t = first_t + qt
            value = float32(0.0)
            if t < num_new:
                value = float32(q[b, t, kv_head * group + (r - qt * group), d] * scale)
            s_q[i] = value
            s_acc[i] = float32(0.0)
        for r in range(tid, rows, nthreads):
            s_max[r] = NEG_INF
            s_sum[r] = float32(0.0)

        # Keys visible to some row of this tile: [lowest, visible).
        last_t = min(first_t + q_tile, num_new) - 1
        visible = seq_len
        if causal:
            visible = seq_len - num_new + last_t + 1
        lowest = 0
        if window > 0:
            lowest = max(0, seq_len - num_new + first_t - window + 1)
        # Below `lowest` only the sinks are read; blocks wholly between the
        # sinks and `lowest` are skipped unread (a pruned sequence has holes
        # there).
        sink_end = min(sinks, lowest)
        first_block = split * blocks_per_split
        end_block = min(
            first_block + blocks_per_split, (visible + block_size - 1) // block_size
        )
        if sink_end <= first_block * block_size:
            first_block = max(first_block, lowest // block_size)
        cuda.syncthreads()

        want_mass = block_mass.shape[0] > 0
        for logical in range(first_block, end_block):
            if (
                logical * block_size >= sink_end
                and (logical + 1) * block_size <= lowest
            ):
                continue  # the same for every thread: no barrier is skipped
            physical = block_tables[b, logical]
            if physical < 0:
                continue  # a hole the cache allows (heavy-hitter pruning)
            for i in range(tid, block_size * head_dim, nthreads):
                j = i // head_dim
                d = i - j * head_dim
                s_k[j * padded + d] = load_key(
                    kv_layer, physical, kv_head, j, d, head_dim
                )
            cuda.syncthreads()

            for i in range(tid, rows * block_size * parts, nthreads):
                pair = i // parts
                lane = i - pair * parts
                r = pair // block_size
                j = pair - r * block_size
                acc = float32(0.0)
                for d in range(lane, head_dim, parts):
                    acc += s_q[r * head_dim + d] * s_k[j * padded + d]
                s_part[i] = acc
            cuda.syncthreads()

            for pair in range(tid, rows * block_size, nthreads):
                r = pair // block_size
                j = pair - r * block_size
                t = first_t + r // group
                query_pos = seq_len - num_new + t
                position = logical * block_size + j
                seen = t < num_new and position < seq_len and query_pos >= 0
                if causal and position > query_pos:
                    seen = False
                if window > 0 and sinks <= position <= query_pos - window:
                    seen = False
                score = NEG_INF
                if seen:
                    score = float32(0.0)
                    for lane in range(parts):
                        score += s_part[pair * parts + lane]
                    if soft_cap > 0.0:
                        score = soft_cap * math.tanh(score / soft_cap)
                s_p[pair] = score
            cuda.syncthreads()

            for r in range(tid, rows, nthreads):
                old_max = s_max[r]
                new_max = old_max
                for j in range(block_size):
                    new_max = max(new_max, s_p[r * block_size + j])
                alpha = float32(1.0)
                if new_max != NEG_INF:
                    alpha = float32(math.exp(old_max - new_max))
                total = float32(0.0)
                for j in range(block_size):
                    s = s_p[r * block_size + j]
                    p = float32(0.0)
                    if s != NEG_INF:
                        p = float32(math.exp(s - new_max))
                    s_p[r * block_size + j] = p
                    total += p
                s_max[r] = new_max
                s_sum[r] = s_sum[r] * alpha + total
                s_alpha[r] = alpha
                if want_mass:
                    mass_parts[0, b, kv_head, r, logical] = total
                    mass_parts[1, b, kv_head, r, logical] = new_max
            cuda.syncthreads()

            # Slots past the sequence's end may hold anything, NaN included,
            # and 0 * NaN is NaN: never touch them.
            live = min(block_size, seq_len - logical * block_size)
            for d in range(tid, head_dim, nthreads):
                for r in range(rows):
                    s_acc[r * head_dim + d] *= s_alpha[r]
                for j in range(live):
                    v = load_value(kv_layer, physical, kv_head, j, d, head_dim)
                    for r in range(rows):
                        s_acc[r * head_dim + d] += s_p[r * block_size + j] * v
        cuda.syncthreads()

        if want_mass:
            for j in range(tid, block_mass.shape[2], nthreads):
                mass = float32(0.0)
                for r in range(rows):
                    part = mass_parts[0, b, kv_head, r, j]
                    if part > 0.0 and s_sum[r] > 0.0:
                        relative = mass_parts[1, b, kv_head, r, j] - s_max[r]
                        mass += part * float32(math.exp(relative)) / s_sum[r]
                block_mass[b, kv_head, j] = mass

        for i in range(tid, rows * head_dim, nthreads):
            r = i // head_dim
            d = i - r * head_dim
            qt = r // group
            t = first_t + qt
            if t < num_new:
                h = kv_head * group + (r - qt * group)
                total = s_sum[r]
                value = float32(0.0)
                if total > 0.0:
                    value = s_acc[i] / total
                if num_splits == 1:
                    out[b, t, h, d] = value
                else:
                    part_out[b, h, split, d] = value
                    if d == 0:
                        part_max[b, h, split] = s_max[r]
                        part_sum[b, h, split] = total

    @cuda.jit
    def merge_splits(part_out: Any, part_max: Any, part_sum: Any, out: Any) -> None:
        """Grid (batch, num_q_heads).  Combines the splits' partial softmax
        states: out = sum_s w_s * part_out_s / sum_s w_s with
        w_s = part_sum_s * exp(part_max_s - max_s part_max_s).
        out: float32 (batch, 1, num_q_heads, D)."""
        b = cuda.blockIdx.x
        h = cuda.blockIdx.y
        num_splits = part_out.shape[2]
        head_dim = part_out.shape[3]
        overall = NEG_INF
        for s in range(num_splits):
            overall = max(overall, part_max[b, h, s])
        for d in range(cuda.threadIdx.x, head_dim, cuda.blockDim.x):
            weight_total = float32(0.0)
            acc = float32(0.0)
            if overall != NEG_INF:
                for s in range(num_splits):
                    m = part_max[b, h, s]
                    if m != NEG_INF:
                        w = part_sum[b, h, s] * float32(math.exp(m - overall))
                        weight_total += w
                        acc += w * part_out[b, h, s, d]
            value = float32(0.0)
            if weight_total > 0.0:
                value = acc / weight_total
            out[b, 0, h, d] = value

    return AttentionKernels(attention, merge_splits)
