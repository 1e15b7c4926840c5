"""Block-size costs: what decode attention and appends cost per block size,
the cost table `llm-select-block-size` reads, and a check of its choices.

    python -m benchmarks.bench_block_size          # measure, print, check
    python -m benchmarks.bench_block_size --write  # and rewrite the shipped
                                                   # llmir/data/block_costs.json
    python -m benchmarks.bench_block_size --quick  # smoke run (not written)

For every element type and head geometry (D = 128; MHA 16/16 and GQA 32/8)
and block sizes 8-128, decode attention is timed over a batch of 16
sequences of one length, for lengths from 16 to 4096 tokens (the time per
sequence at each length is the table's curve); appending one token to 64
sequences is timed with and without a new block.  Attention is timed with
the caches flushed before each call (a serving step's K/V does not fit in
the last-level cache).  The check then takes
three workloads (short chat turns, long documents, a mix), measures one
decode step (attention + append) at every block size, and compares the
fastest with the pass's modelled choice.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Table, benchmark_main, measure, progress
from llmir import PagedKVCache, paged_attention
from llmir.transforms.block_size_model import (
    BlockCost,
    choose_block_size,
    exponential_lengths,
    waste,
)

HEAD_DIM = 128
BLOCK_SIZES = (8, 16, 32, 64, 128)
GEOMETRIES = ((16, 16), (32, 8))
ELEMENTS = ("f32", "f16", "bf16")
FIT_LENGTHS = (16, 48, 128, 256, 512, 1024, 2048, 4096)
FIT_BATCH = 16
APPEND_BATCH = 64
MAX_SEQ_LEN = 8192
COSTS_PATH = Path(__file__).parents[1] / "llmir" / "data" / "block_costs.json"


_FLUSH = np.ones(1 << 25, np.float32)  # 128 MiB, 4x the last-level cache


def _cold_seconds(fn: Any, repeats: int = 9) -> float:
    """Median seconds of `fn()` with the caches flushed before each call
    (reading 128 MiB): in serving, a step's K/V (every layer, every
    sequence) is far larger than the last-level cache, so a kernel reads
    it from memory; timing a small pool hot in L3 would flatter short
    sequences."""
    fn()
    samples: list[float] = []
    for _ in range(repeats):
        float(_FLUSH.sum())
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def _one_layer(element: str, kv_heads: int, block: int, blocks: int) -> PagedKVCache:
    return PagedKVCache(
        1, kv_heads, HEAD_DIM, block, MAX_SEQ_LEN, element, num_blocks=blocks
    )


def _filled_cache(
    element: str, kv_heads: int, block: int, lengths: list[int], spare: int
) -> tuple[PagedKVCache, np.ndarray, np.ndarray]:
    """A one-layer cache holding sequences of `lengths` (zeros: the kernels
    take the same time for any finite data), their blocks interleaved as a
    serving pool's are (each sequence grows a block at a time, in turn),
    with `spare` free blocks; its block table and lengths."""
    need = [-(-n // block) for n in lengths]
    cache = _one_layer(element, kv_heads, block, sum(need) + spare)
    chunk = np.zeros((1, 1, block, kv_heads, HEAD_DIM), np.float32)
    for j in range(max(need)):
        for seq, n in enumerate(lengths):
            tokens = min(block, n - j * block)
            if tokens > 0:
                part = chunk[:, :, :tokens]
                cache.append_kv_all_layers(part, part, [seq])
    table, lens = cache.block_table(list(range(len(lengths))))
    return cache, table, lens


def _attention_curve(
    element: str, q_heads: int, kv_heads: int, block: int, lengths: tuple[int, ...]
) -> list[float]:
    """Microseconds per sequence of a decode step over FIT_BATCH sequences
    of each of `lengths` tokens (one pool, filled once, read to each n)."""
    longest = max(lengths)
    cache, table, _ = _filled_cache(element, kv_heads, block, [longest] * FIT_BATCH, 0)
    query = np.random.default_rng(1).standard_normal(
        (FIT_BATCH, 1, q_heads, HEAD_DIM), np.float32
    )
    out = np.empty_like(query)
    curve: list[float] = []
    for n in lengths:
        lens = np.full(FIT_BATCH, n, np.int32)
        width = -(-n // block)
        seconds = _cold_seconds(
            lambda lens=lens, width=width: paged_attention(
                query, cache, table[:, :width], lens, out=out
            )
        )
        curve.append(round(seconds / FIT_BATCH * 1e6, 3))
    return curve


def _append_costs(element: str, kv_heads: int, block: int) -> tuple[float, float]:
    """ns per appended token, and per new block, for a batch of 64."""
    ids = np.arange(APPEND_BATCH)
    x = np.zeros((1, APPEND_BATCH, 1, kv_heads, HEAD_DIM), np.float32)
    cache = _one_layer(element, kv_heads, block, APPEND_BATCH * 4)
    first = np.zeros((1, APPEND_BATCH, block, kv_heads, HEAD_DIM), np.float32)

    def setup() -> None:
        cache.reset()
        cache.append_kv_all_layers(first, first, ids)  # aligned: next needs a block

    def steps(count: int) -> None:
        setup()
        for _ in range(count):
            cache.append_kv_all_layers(x, x, ids)

    base = measure(setup, repeats=7).median
    one = measure(lambda: steps(1), repeats=7).median - base
    full = measure(lambda: steps(block), repeats=7).median - base
    token = max(0.0, (full - one) / max(1, block - 1))
    new_block = max(0.0, one - token)
    return token / APPEND_BATCH * 1e9, new_block / APPEND_BATCH * 1e9


def measure_costs(quick: bool) -> list[BlockCost]:
    costs: list[BlockCost] = []
    elements = ("f16",) if quick else ELEMENTS
    geometries = GEOMETRIES[:1] if quick else GEOMETRIES
    lengths = FIT_LENGTHS[:3] if quick else FIT_LENGTHS
    for element in elements:
        for q_heads, kv_heads in geometries:
            for block in BLOCK_SIZES:
                progress(f"  {element} {q_heads}/{kv_heads} block {block}")
                curve = _attention_curve(element, q_heads, kv_heads, block, lengths)
                append_token, append_block = _append_costs(element, kv_heads, block)
                costs.append(
                    BlockCost(
                        element,
                        q_heads,
                        kv_heads,
                        HEAD_DIM,
                        block,
                        list(lengths),
                        curve,
                        round(append_token, 3),
                        round(append_block, 3),
                    )
                )
    return costs


def workloads(quick: bool) -> dict[str, list[int]]:
    rng = np.random.default_rng(5)
    scale = 4 if quick else 1
    chat = exponential_lengths(200, 1024, 16)
    long = [int(n) for n in rng.integers(4000 // scale, 8192 // scale, 8)]
    mixed = exponential_lengths(300, 2048, 12) + [
        int(n) for n in rng.integers(4000 // scale, 8000 // scale, 4)
    ]
    return {"short chat turns": chat, "long documents": long, "mixed": mixed}


def _step_seconds(
    element: str, q_heads: int, kv_heads: int, block: int, lengths: list[int]
) -> float:
    """One decode step of the workload: attention, then one token appended
    to every sequence (the pool has room for the repetitions)."""
    cache, table, lens = _filled_cache(
        element, kv_heads, block, lengths, 4 * len(lengths)
    )
    ids = np.arange(len(lengths))
    query = np.random.default_rng(1).standard_normal(
        (len(lengths), 1, q_heads, HEAD_DIM), np.float32
    )
    x = np.zeros((1, len(lengths), 1, kv_heads, HEAD_DIM), np.float32)
    out = np.empty_like(query)

    def step() -> None:
        paged_attention(query, cache, table, lens, out=out)
        cache.append_kv_all_layers(x, x, ids)

    return _cold_seconds(step)


def check(table: Table, costs: list[BlockCost], quick: bool) -> None:
    element, (q_heads, kv_heads) = "f16", GEOMETRIES[0]
    for name, lengths in workloads(quick).items():
        progress(f"  check: {name}")
        choice = choose_block_size(
            costs,
            element,
            q_heads,
            kv_heads,
            HEAD_DIM,
            lengths,
            max_seq_len=MAX_SEQ_LEN,
        )
        measured = {
            b: _step_seconds(element, q_heads, kv_heads, b, lengths) * 1e6
            for b in BLOCK_SIZES
        }
        fastest = min(measured, key=lambda b: measured[b])
        ratio = measured[choice.block_size] / measured[fastest]
        table.add(
            workload=f"{name} ({len(lengths)} seqs, mean {int(np.mean(lengths))})",
            predicted=", ".join(
                f"{b}: {choice.predicted_us[b]:.0f}"
                for b in sorted(choice.predicted_us)
            ),
            measured=", ".join(f"{b}: {measured[b]:.0f}" for b in BLOCK_SIZES),
            chosen=choice.block_size,
            fastest=fastest,
            waste=f"{100 * waste(lengths, choice.block_size):.1f}%",
            verdict=f"{'meets' if ratio <= 1.05 else 'MISSES'} ({ratio:.3f}x)",
        )


def run(args: Any) -> list[Table]:
    quick = bool(args.quick)
    progress("measuring block-size costs ...")
    costs = measure_costs(quick)
    fitted = Table(
        "Measured costs per block size: decode attention, us per sequence (batch "
        f"{FIT_BATCH}) at each length; append ns per token / per new block",
        [
            "element",
            "Hq/H",
            "block",
            "us per sequence at n tokens",
            "token ns",
            "append ns",
            "new block ns",
        ],
    )
    for c in costs:
        fitted.add(
            element=c.element,
            block=c.block_size,
            **{
                "Hq/H": f"{c.q_heads}/{c.kv_heads}",
                "us per sequence at n tokens": ", ".join(
                    f"{n}: {t:.1f}" for n, t in zip(c.lengths, c.seq_us, strict=True)
                ),
                "token ns": c.token_ns,
                "append ns": c.append_token_ns,
                "new block ns": c.append_block_ns,
            },
        )
    if args.write and not quick:
        COSTS_PATH.write_text(
            json.dumps(
                {
                    "generated": datetime.date.today().isoformat(),
                    "machine": f"{platform.machine()} {platform.processor()}".strip(),
                    "command": "python -m benchmarks.bench_block_size --write",
                    "entries": [c.__dict__ for c in costs],
                },
                indent=1,
            )
            + "\n"
        )
        progress(f"wrote {COSTS_PATH}")
    checks = Table(
        "llm-select-block-size: modelled choice vs the fastest measured (f16, "
        "16/16, D=128; us per decode step, attention + append)",
        ["workload", "predicted", "measured", "chosen", "fastest", "waste", "verdict"],
    )
    check(checks, costs, quick)
    fitted.print()
    checks.print()
    return [fitted, checks]


def main() -> None:
    benchmark_main(
        (__doc__ or "").splitlines()[0],
        run,
        lambda parser: parser.add_argument(
            "--write",
            action="store_true",
            help="rewrite llmir/data/block_costs.json with the measured costs",
        ),
    )


if __name__ == "__main__":
    main()
