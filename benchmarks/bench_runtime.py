"""Runtime benchmark: prefill append, decode append (with its bookkeeping
share) and lookup of the paged KV cache, against the copy bandwidth measured
in the same run.

    python -m benchmarks.bench_runtime [--quick] [--json PATH]

Bandwidth figures count bytes read plus bytes written, like the copy limit
(`benchmarks.common.copy_limit`), so the percentages compare like with like.
``--quick`` shrinks the shapes (a smoke test, not a measurement).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import (
    Table,
    Timing,
    benchmark_main,
    copy_limit,
    measure,
    progress,
)
from llmir.runtime import PagedKVCache
from llmir.runtime.cpu import copy_kernels

LAYERS, HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16
REPEATS = 9


def _rand(shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def bench_prefill(
    table: Table, kernels: str, dtype: str, tokens: int, layers: int, limit: float
) -> None:
    """One sequence of `tokens` tokens appended to all layers in one call."""
    cache = PagedKVCache(
        layers, HEADS, HEAD_DIM, BLOCK, tokens, dtype, num_blocks=-(-tokens // BLOCK)
    )
    keys = _rand((layers, 1, tokens, HEADS, HEAD_DIM))
    values = keys + 1

    def step() -> None:
        cache.reset()
        cache.append_kv_all_layers(keys, values, [0])

    timing = measure(step, repeats=REPEATS)
    moved = keys.nbytes * 2 + 2 * keys.size * cache.element_type.itemsize  # r + w
    gbs = moved / timing.median / 1e9
    table.add(
        kernels=kernels,
        operation=f"prefill {tokens} tok x {layers} layers, {dtype}",
        ms=timing,
        **{"GB/s": gbs, "% of copy": 100 * gbs / limit},
        working_set_bytes=moved,
    )


def bench_lookup(
    table: Table,
    kernels: str,
    dtype: str,
    batch: int,
    tokens: int,
    limit: float,
    reuse_out: bool,
) -> None:
    """One layer's keys and values of `batch` sequences of `tokens` tokens,
    into fresh arrays or (`reuse_out`) into buffers reused across calls."""
    cache = PagedKVCache(
        1, HEADS, HEAD_DIM, BLOCK, tokens, dtype, num_blocks=batch * -(-tokens // BLOCK)
    )
    ids = np.arange(batch)
    keys = _rand((batch, tokens, HEADS, HEAD_DIM))
    cache.append_kv(keys, keys, ids)
    lookup_table, lens = cache.block_table(ids)
    out = cache.lookup_kv(lookup_table, lens)
    if reuse_out:
        timing = measure(
            lambda: cache.lookup_kv(lookup_table, lens, out=out), repeats=REPEATS
        )
    else:
        timing = measure(lambda: cache.lookup_kv(lookup_table, lens), repeats=REPEATS)
    moved = 2 * (out[0].nbytes + keys.size * cache.element_type.itemsize)
    gbs = moved / timing.median / 1e9
    where = "into reused out" if reuse_out else "into new arrays"
    table.add(
        kernels=kernels,
        operation=f"lookup {batch} x {tokens} tok, {dtype} -> {out[0].dtype}, {where}",
        ms=timing,
        **{"GB/s": gbs, "% of copy": 100 * gbs / limit},
        working_set_bytes=moved,
    )


def bench_decode(table: Table, dtype: str, batch: int, layers: int, steps: int) -> None:
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
    seqs = cache.sequences

    def setup() -> None:
        cache.reset()
        cache.append_kv_all_layers(first, first, ids)

    def run(per_layer: bool) -> None:
        setup()
        for _ in range(steps):
            if per_layer:
                for layer in range(layers):
                    cache.append_kv(tok[layer], tok[layer], ids, layer=layer)
            else:
                cache.append_kv_all_layers(tok, tok, ids)

    # Bookkeeping alone: plan + commit (allocation, table update, slot
    # mapping), without validation of the tensors or the copy kernel.
    def bookkeeping(per_layer: bool) -> None:
        cache.reset()
        seqs.commit_append(seqs.plan_append(ids, 1, None))
        for _ in range(steps):
            if per_layer:
                for lay in range(layers):
                    seqs.commit_append(seqs.plan_append(ids, 1, lay))
            else:
                seqs.commit_append(seqs.plan_append(ids, 1, None))

    def bookkeeping_setup() -> None:
        cache.reset()
        seqs.commit_append(seqs.plan_append(ids, 1, None))

    base = measure(setup, repeats=REPEATS)
    b_base = measure(bookkeeping_setup, repeats=REPEATS)
    for per_layer, label in (
        (False, f"{layers} layers in 1 call"),
        (True, f"{layers} x append_kv"),
    ):
        total = measure(lambda p=per_layer: run(p), repeats=REPEATS)
        books = measure(lambda p=per_layer: bookkeeping(p), repeats=REPEATS)
        per_step = _minus(total, base, steps)
        books_per_step = _minus(books, b_base, steps)
        table.add(
            **{
                "decode step": f"b={batch}, {label}, {dtype}",
                "us/step": per_step,
                "bookkeeping us": books_per_step,
                "bookkeeping us/seq": books_per_step.median * 1e6 / batch,
            }
        )


def _minus(total: Timing, base: Timing, steps: int) -> Timing:
    """Per-step time of `total` without the setup `base` (sample by sample,
    against the base's median)."""
    return Timing(tuple((t - base.median) / steps for t in total.samples))


def run(args: Any) -> list[Table]:
    tokens, layers, batch, steps, lk_tokens = (
        (128, 4, 16, 17, 128) if args.quick else (2048, LAYERS, 256, 16, 2048)
    )
    limit = copy_limit(nbytes=(1 << 26) if args.quick else (1 << 30))
    print(f"copy bandwidth (read + write, measured now): {limit.describe()}")
    print(f"H={HEADS}, D={HEAD_DIM}, block_size={BLOCK}; medians of {REPEATS} ±IQR/2\n")
    copies = Table(
        "append and lookup",
        ["kernels", "operation", "ms", "GB/s", "% of copy"],
    )
    default_threshold = copy_kernels.PARALLEL_MIN_ELEMENTS
    # Parallel (the default for these sizes) and, for comparison, serial.
    for threshold, kernels in ((default_threshold, "prange"), (1 << 62, "serial")):
        copy_kernels.PARALLEL_MIN_ELEMENTS = threshold
        for d in ("f32", "f16", "bf16"):
            progress(f"  {kernels} prefill {d}")
            bench_prefill(copies, kernels, d, tokens, layers, limit.gbs)
        for reuse in (True, False):
            for d in ("f32", "f16", "bf16"):
                progress(f"  {kernels} lookup {d}")
                bench_lookup(copies, kernels, d, 8, lk_tokens, limit.gbs, reuse)
    copy_kernels.PARALLEL_MIN_ELEMENTS = default_threshold
    copies.print()
    decode = Table(
        "decode append",
        ["decode step", "us/step", "bookkeeping us", "bookkeeping us/seq"],
    )
    for d in ("f16", "f32"):
        progress(f"  decode {d}")
        bench_decode(decode, d, batch, layers, steps)
    decode.print()
    return [copies, decode]


def main() -> None:
    benchmark_main((__doc__ or "").splitlines()[0], run)


if __name__ == "__main__":
    main()
