"""Runtime benchmark: prefill append, decode append (with its bookkeeping
share) and lookup of the paged KV cache, against the copy bandwidth measured
in the same run.

    python -m benchmarks.bench_runtime [--quick]

Bandwidth figures count bytes read plus bytes written, like
`benchmarks.common.copy_bandwidth_gbs`, so the percentages compare like with
like.  ``--quick`` shrinks the shapes (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks.common import copy_bandwidth_gbs, median_seconds, print_table
from llmir.runtime import PagedKVCache
from llmir.runtime.cpu import copy_kernels

LAYERS, HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16


def _rand(shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def bench_prefill(dtype: str, tokens: int, layers: int, copy_bw: float) -> list[Any]:
    """One sequence of `tokens` tokens appended to all layers in one call."""
    cache = PagedKVCache(
        layers, HEADS, HEAD_DIM, BLOCK, tokens, dtype, num_blocks=-(-tokens // BLOCK)
    )
    keys = _rand((layers, 1, tokens, HEADS, HEAD_DIM))
    values = keys + 1

    def step() -> None:
        cache.reset()
        cache.append_kv_all_layers(keys, values, [0])

    t = median_seconds(step, repeats=5, warmup=1)
    moved = (
        keys.nbytes * 2 + 2 * keys.size * cache.element_type.itemsize
    )  # read + write
    gbs = moved / t / 1e9
    return [
        f"prefill {tokens} tok x {layers} layers, {dtype}",
        t * 1e3,
        gbs,
        100 * gbs / copy_bw,
    ]


def bench_decode(dtype: str, batch: int, layers: int, steps: int) -> list[list[Any]]:
    """`steps` decode steps of one token for `batch` sequences, all layers in
    one call and layer by layer; bookkeeping measured on its own."""
    # Each sequence starts with one token; the steps cross one block boundary
    # per sequence, so the run includes the allocations of a real decode.
    max_len = 1 + steps
    blocks = batch * -(-max_len // BLOCK)
    cache = PagedKVCache(
        layers, HEADS, HEAD_DIM, BLOCK, max_len, dtype, num_blocks=blocks
    )
    ids = np.arange(batch)
    first = _rand((layers, batch, 1, HEADS, HEAD_DIM))
    tok = first + 1

    def run(per_layer: bool) -> None:
        cache.reset()
        cache.append_kv_all_layers(first, first, ids)
        for _ in range(steps):
            if per_layer:
                for layer in range(layers):
                    cache.append_kv(tok[layer], tok[layer], ids, layer=layer)
            else:
                cache.append_kv_all_layers(tok, tok, ids)

    def setup_only() -> None:
        cache.reset()
        cache.append_kv_all_layers(first, first, ids)

    base = median_seconds(setup_only, repeats=5)
    t_all = (median_seconds(lambda: run(False), repeats=5) - base) / steps
    t_layer = (median_seconds(lambda: run(True), repeats=5) - base) / steps

    # Bookkeeping alone: plan + commit (allocation, table update, slot
    # mapping), without validation of the tensors or the copy kernel.
    seqs = cache.sequences

    def bookkeeping(layer: int | None) -> None:
        cache.reset()
        seqs.commit_append(seqs.plan_append(ids, 1, None))
        for _ in range(steps):
            if layer is None:
                seqs.commit_append(seqs.plan_append(ids, 1, None))
            else:
                for lay in range(layers):
                    seqs.commit_append(seqs.plan_append(ids, 1, lay))

    b_base = median_seconds(
        lambda: (cache.reset(), seqs.commit_append(seqs.plan_append(ids, 1, None))),
        repeats=5,
    )
    b_all = (median_seconds(lambda: bookkeeping(None), repeats=5) - b_base) / steps
    b_layer = (median_seconds(lambda: bookkeeping(0), repeats=5) - b_base) / steps
    us = 1e6
    return [
        [
            f"decode b={batch}, {layers} layers in 1 call, {dtype}",
            t_all * us,
            b_all * us,
            b_all * us / batch,
        ],
        [
            f"decode b={batch}, {layers} x append_kv, {dtype}",
            t_layer * us,
            b_layer * us,
            b_layer * us / batch,
        ],
    ]


def bench_lookup(
    dtype: str, batch: int, tokens: int, copy_bw: float, reuse_out: bool
) -> list[Any]:
    """One layer's keys and values of `batch` sequences of `tokens` tokens,
    into fresh arrays or (`reuse_out`) into buffers reused across calls."""
    cache = PagedKVCache(
        1, HEADS, HEAD_DIM, BLOCK, tokens, dtype, num_blocks=batch * -(-tokens // BLOCK)
    )
    ids = np.arange(batch)
    keys = _rand((batch, tokens, HEADS, HEAD_DIM))
    cache.append_kv(keys, keys, ids)
    table, lens = cache.block_table(ids)
    out = cache.lookup_kv(table, lens)
    if reuse_out:
        t = median_seconds(lambda: cache.lookup_kv(table, lens, out=out), repeats=7)
    else:
        t = median_seconds(lambda: cache.lookup_kv(table, lens), repeats=7)
    moved = 2 * (
        out[0].nbytes + keys.size * cache.element_type.itemsize
    )  # K+V, read+write
    gbs = moved / t / 1e9
    where = "into reused out" if reuse_out else "into new arrays"
    return [
        f"lookup {batch} x {tokens} tok, {dtype} -> {out[0].dtype}, {where}",
        t * 1e3,
        gbs,
        100 * gbs / copy_bw,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small shapes (smoke test)"
    )
    args = parser.parse_args()
    tokens, layers, batch, steps, lk_tokens = (
        (128, 4, 16, 17, 128) if args.quick else (2048, LAYERS, 256, 16, 2048)
    )
    copy_bw = copy_bandwidth_gbs(nbytes=(1 << 26) if args.quick else (1 << 30))
    print(f"copy bandwidth (read + write, measured now): {copy_bw:.1f} GB/s")
    print(f"H={HEADS}, D={HEAD_DIM}, block_size={BLOCK}\n")
    rows: list[list[Any]] = []
    default_threshold = copy_kernels.PARALLEL_MIN_ELEMENTS
    # Parallel (the default for these sizes) and, for comparison, serial.
    for threshold, kernels in ((default_threshold, "prange"), (1 << 62, "serial")):
        copy_kernels.PARALLEL_MIN_ELEMENTS = threshold
        for d in ("f32", "f16", "bf16"):
            rows.append([kernels, *bench_prefill(d, tokens, layers, copy_bw)])
        for reuse in (True, False):
            for d in ("f32", "f16", "bf16"):
                rows.append([kernels, *bench_lookup(d, 8, lk_tokens, copy_bw, reuse)])
    copy_kernels.PARALLEL_MIN_ELEMENTS = default_threshold
    print_table(["kernels", "append / lookup", "ms", "GB/s", "% of copy"], rows)
    print()
    rows = [r for d in ("f16", "f32") for r in bench_decode(d, batch, layers, steps)]
    print_table(
        ["decode step", "us/step", "bookkeeping us", "bookkeeping us/seq"], rows
    )


if __name__ == "__main__":
    main()
