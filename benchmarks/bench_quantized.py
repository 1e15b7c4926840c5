"""Quantized caches (i8, i4) against f16: decode time, bytes, and the cost of
quantising on append.

    python -m benchmarks.bench_quantized [--quick] [--json PATH]

Four tables, the machine's limits measured in the same run:

* decode (batch 8, context 8192, head_dim 128, MHA 16/16 and GQA 32/8,
  block 16 and 64): f16, i8 and i4 caches holding the same tokens, timed in
  turns (`measure_alternated`) so each sees the same moments of a shared
  machine; GB/s counts the bytes the kernel reads (codes and scales of the
  sequences' blocks), % of the read limit, the bandwidth of a plain sum
  over the very runs the kernel reads in its order (`paged_read`: the
  ceiling of a paged kernel, whose runs are too short for the hardware's
  prefetchers to stream) and the kernel's % of it, and the speedup over
  f16; on a CPU with AVX-512 VNNI, the i8 cache again with its integer
  tiles turned off ("i8, float tiles"), so the run shows what they gain;
* hot decode: the cost of a token's codes and scales once they are in
  cache (one thread, 8 kv heads, MHA and GQA 4 rows per kv head, block 16
  and 64: ns per token and kv head, the time of a 512-token context less
  that of a 128-token one, so a call's fixed cost drops out; pools of at
  most 2 MiB, within or near L2), every kind and length timed in turns:
  what the kernels' arithmetic and per-block work cost, apart from memory
  (with the same "i8, float tiles" row);
* pool bytes per element (codes, key scales, value scales) at block 16 and
  64, head_dim 64 and 128, as a fraction of f16;
* append: prefilling 8 sequences of 2048 tokens (one layer, 8 kv heads),
  input GB/s (float32 keys and values read) as % of the copy limit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from benchmarks.common import (
    Table,
    benchmark_main,
    copy_limit,
    measure,
    measure_alternated,
    paged_read,
    progress,
    read_limit,
)
from llmir import PagedKVCache
from llmir.runtime.cpu import vnni
from llmir.runtime.dtypes import element_type
from llmir.runtime.geometry import CacheGeometry

HEAD_DIM = 128
KINDS = ("f16", "i8", "i4")
FLOAT_TILES = "i8, float tiles"
"""The i8 cache again with its integer tiles off (``LLMIR_CPU_VNNI=0``),
on CPUs that have them: what `llmir.runtime.cpu.vnni` gains, in the same
run."""


def _labels() -> tuple[str, ...]:
    """The rows of the decode tables: each kind, and the i8 float tiles
    where the integer ones are on."""
    return (*KINDS, FLOAT_TILES) if vnni.enabled() else KINDS


def _kind(label: str) -> str:
    return "i8" if label == FLOAT_TILES else label


def _as_labelled(label: str, call: Callable[[], Any]) -> Callable[[], Any]:
    """`call`, with the integer tiles off for the float-tiles row."""
    if label != FLOAT_TILES:
        return call

    def without_integer_tiles() -> Any:
        before = os.environ.get("LLMIR_CPU_VNNI")
        os.environ["LLMIR_CPU_VNNI"] = "0"
        try:
            return call()
        finally:
            if before is None:
                del os.environ["LLMIR_CPU_VNNI"]
            else:
                os.environ["LLMIR_CPU_VNNI"] = before

    return without_integer_tiles


def _filled(
    kind: str, batch: int, context: int, heads: int, block: int, rng: Any
) -> PagedKVCache:
    blocks = batch * -(-context // block)
    cache = PagedKVCache(1, heads, HEAD_DIM, block, context, kind, num_blocks=blocks)
    chunk = 1024
    for start in range(0, context, chunk):
        n = min(chunk, context - start)
        k = rng.standard_normal((batch, n, heads, HEAD_DIM), dtype=np.float32)
        cache.append_kv(k, k, list(range(batch)))
    return cache


def decode_rows(table: Table, quick: bool, repeats: int, limit_gbs: float) -> None:
    batch, context = (2, 2048) if quick else (8, 8192)
    for q_heads, kv_heads in ((16, 16), (32, 8)):
        for block in (16, 64):
            progress(f"  decode {q_heads}/{kv_heads}, block {block} ...")
            rng = np.random.default_rng(0)
            by_kind = {
                kind: _filled(kind, batch, context, kv_heads, block, rng)
                for kind in KINDS
            }
            labels = _labels()
            caches = [by_kind[_kind(label)] for label in labels]
            query = rng.standard_normal((batch, 1, q_heads, HEAD_DIM), np.float32)
            out = np.empty_like(query)
            tables = [cache.block_table(list(range(batch))) for cache in caches]
            calls = [
                _as_labelled(
                    label,
                    lambda c=cache, t=table_, n=lens, q=query, o=out: c.paged_attention(
                        q, t, n, out=o
                    ),
                )
                for label, cache, (table_, lens) in zip(
                    labels, caches, tables, strict=True
                )
            ]
            timings = measure_alternated(calls, repeats=repeats)
            f16_time = timings[0].median
            for kind, cache, (table_, lens), timing in zip(
                labels, caches, tables, timings, strict=True
            ):
                read = batch * -(-context // block) * cache.geometry.bytes_per_block
                gbs = read / timing.median / 1e9
                paged_gbs, _ = paged_read(
                    cache.kv_pool[0], table_, -(-lens // block), repeats
                )
                table.add(
                    **{"Hq/H": f"{q_heads}/{kv_heads}"}, block=block, dtype=kind,
                    ms=timing, MiB=read / 2**20, **{"GB/s": gbs,
                    "% limit": 100 * gbs / limit_gbs, "paged GB/s": paged_gbs,
                    "% paged": 100 * gbs / paged_gbs,
                    "speedup vs f16": f16_time / timing.median},
                    working_set_bytes=read,
                )  # fmt: skip
            del caches


HOT_HEADS = 8
HOT_CONTEXTS = (128, 512)


def hot_rows(table: Table, repeats: int) -> None:
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for group in (1, 4):
            for block in (16, 64):
                progress(f"  hot decode, group {group}, block {block} ...")
                rng = np.random.default_rng(2)
                made: dict[tuple[str, int], Callable[[], Any]] = {}
                for kind in KINDS:
                    for context in HOT_CONTEXTS:
                        cache = _filled(kind, 1, context, HOT_HEADS, block, rng)
                        query = rng.standard_normal(
                            (1, 1, group * HOT_HEADS, HEAD_DIM), np.float32
                        )
                        table_, lens = cache.block_table([0])
                        made[kind, context] = (
                            lambda c=cache, t=table_, n=lens, q=query: (
                                c.paged_attention(q, t, n, out=np.empty_like(q))
                            )
                        )
                labels = _labels()
                calls = [
                    _as_labelled(label, made[_kind(label), context])
                    for label in labels
                    for context in HOT_CONTEXTS
                ]
                timings = measure_alternated(calls, repeats=repeats, min_time=0.02)
                tokens = (HOT_CONTEXTS[1] - HOT_CONTEXTS[0]) * HOT_HEADS
                per_token = [
                    (timings[2 * i + 1].median - timings[2 * i].median) / tokens
                    for i in range(len(labels))
                ]
                for kind, seconds, longer in zip(
                    labels, per_token, timings[1::2], strict=True
                ):
                    table.add(
                        **{"Hq/H": f"{group * HOT_HEADS}/{HOT_HEADS}"}, block=block,
                        dtype=kind, **{"ns/token": seconds * 1e9,
                        "spread %": 100 * longer.spread,
                        "x f16": per_token[0] / seconds},
                    )  # fmt: skip
    finally:
        numba.set_num_threads(threads)


def bytes_rows(table: Table) -> None:
    for head_dim in (64, 128):
        for block in (16, 64):
            f16 = CacheGeometry(element_type("f16"), 1, 1, head_dim, block, 1024)
            f16_bytes = f16.bytes_per_block / (2 * block * head_dim)
            for kind in KINDS:
                kind_type = element_type(kind)
                g = CacheGeometry(kind_type, 1, 1, head_dim, block, 1024)
                per_element = g.bytes_per_block / (2 * block * head_dim)
                quant = kind_type.quant
                codes = quant.bits / 8 if quant else f16_bytes
                k_scales = (
                    quant.key_meta_row_bytes(head_dim, block) / (2 * head_dim)
                    if quant
                    else 0.0
                )
                v_scales = (
                    quant.value_meta_row_bytes(head_dim) / (2 * head_dim)
                    if quant
                    else 0.0
                )
                table.add(
                    head_dim=head_dim, block=block, dtype=kind,
                    **{"bytes/elem": per_element, "codes": codes,
                       "K scales": k_scales, "V scales": v_scales,
                       "x f16": per_element / f16_bytes},
                )  # fmt: skip


def append_rows(table: Table, quick: bool, repeats: int, copy_gbs: float) -> None:
    batch, tokens, heads = (2, 512, 8) if quick else (8, 2048, 8)
    rng = np.random.default_rng(1)
    k = rng.standard_normal((batch, tokens, heads, HEAD_DIM), dtype=np.float32)
    for kind in KINDS:
        blocks = batch * -(-tokens // 16)
        cache = PagedKVCache(1, heads, HEAD_DIM, 16, tokens, kind, num_blocks=blocks)

        def append(c: PagedKVCache = cache) -> None:
            c.reset()
            c.append_kv(k, k, list(range(batch)))

        timing = measure(append, repeats=repeats, warmup=1)
        gbs = 2 * k.nbytes / timing.median / 1e9
        table.add(
            dtype=kind, tokens=batch * tokens, ms=timing,
            **{"input GB/s": gbs, "% copy limit": 100 * gbs / copy_gbs},
        )  # fmt: skip


def run(args: Any) -> list[Table]:
    quick = bool(args.quick)
    repeats = 3 if quick else 9
    progress("read and copy limits ...")
    limit = read_limit()
    copies = copy_limit()
    decode = Table(
        "Quantized decode (D = 128, times taken in turns; GB/s of codes and "
        f"scales read; read limit {limit.describe()})",
        ["Hq/H", "block", "dtype", "ms", "MiB", "GB/s", "% limit", "paged GB/s",
         "% paged", "speedup vs f16"],
    )  # fmt: skip
    decode_rows(decode, quick, repeats, limit.gbs)
    progress("hot decode ...")
    hot = Table(
        "Hot decode (one thread, pool in cache: ns per token and kv head, "
        f"{HOT_CONTEXTS[1]} tokens less {HOT_CONTEXTS[0]}; spread: of the longer)",
        ["Hq/H", "block", "dtype", "ns/token", "spread %", "x f16"],
    )
    hot_rows(hot, repeats)
    sizes = Table(
        "Pool bytes per element (K and V averaged): codes and scales",
        ["head_dim", "block", "dtype", "bytes/elem", "codes", "K scales",
         "V scales", "x f16"],
    )  # fmt: skip
    bytes_rows(sizes)
    progress("append ...")
    appends = Table(
        f"Append (quantise) of float32 keys and values; copy limit {copies.describe()}",
        ["dtype", "tokens", "ms", "input GB/s", "% copy limit"],
    )
    append_rows(appends, quick, repeats, copies.gbs)
    for table in (decode, hot, sizes, appends):
        table.print()
    return [decode, hot, sizes, appends]


def main() -> None:
    benchmark_main((__doc__ or "").splitlines()[0], run)


if __name__ == "__main__":
    main()
