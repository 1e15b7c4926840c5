"""Shared measurement helpers of the benchmarks.

* `measure` times a call: a median and a spread (quartiles, min and max)
  over several repetitions after warm-up; a row whose interquartile range
  exceeds `UNSTABLE_SPREAD` of its median is flagged as unstable.
* `read_limit` and `copy_limit` measure the machine's memory bandwidth in the
  same run, as the best of several probes (a Numba prange loop, numpy in
  threads, torch when installed) over a working set far larger than the
  last-level cache: the limit a kernel is compared against.
* `paged_read` measures the read bandwidth over the scattered runs of a
  paged pool that decode attention reads, in its order: a paged kernel's
  own ceiling, below `read_limit` where runs are short.
* `Table` prints a table once, keeps its rows for JSON, and marks a row
  whose working set is not much larger than the last-level cache as
  cache-resident (its "% of limit" may then exceed 100).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np
from numba import njit, prange  # pyright: ignore[reportUnknownVariableType]

from llmir.runtime.cpu.attention_kernels import prefetch_line

UNSTABLE_SPREAD = 0.10
"""A row whose interquartile range exceeds this fraction of its median is
flagged: on a shared machine its digits are not to be trusted."""

LIMIT_BYTES = 1 << 30
"""Working set of the bandwidth probes: 1 GiB, 32x a 32 MiB L3."""

TORCH_HINT = "torch is not installed: its columns are empty (pip install -e '.[bench]')"


# ---------------------------------------------------------------------------
# Timing


@dataclass(frozen=True)
class Timing:
    """Seconds per call over repetitions."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        first = self.samples[0]
        if len(self.samples) < 2:
            return first, first
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def spread(self) -> float:
        """Interquartile range as a fraction of the median."""
        q1, q3 = self.quartiles
        return (q3 - q1) / self.median if self.median else 0.0

    @property
    def unstable(self) -> bool:
        return self.spread > UNSTABLE_SPREAD

    def as_dict(self, scale: float = 1e3) -> dict[str, Any]:
        q1, q3 = self.quartiles
        return {
            "median": self.median * scale,
            "q1": q1 * scale,
            "q3": q3 * scale,
            "min": min(self.samples) * scale,
            "max": max(self.samples) * scale,
            "repeats": len(self.samples),
        }


def measure(
    fn: Callable[[], Any], repeats: int = 9, warmup: int = 2, min_time: float = 0.0
) -> Timing:
    """Time `fn()` `repeats` times after `warmup` calls.  With `min_time`,
    each sample loops `fn` until that long has passed and reports the time
    per call (for microsecond-scale work)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    for _ in range(repeats):
        calls = 0
        start = time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        samples.append(elapsed / calls)
    return Timing(tuple(samples))


def measure_alternated(
    fns: Sequence[Callable[[], Any]], repeats: int = 9, min_time: float = 0.0
) -> list[Timing]:
    """Time each of `fns` `repeats` times, taking turns, after one warm-up
    call each: every function sees the same moments of a shared machine,
    which separate runs do not."""
    for fn in fns:
        fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, mine in zip(fns, samples, strict=True):
            mine.append(measure(fn, 1, 0, min_time).median)
    return [Timing(tuple(mine)) for mine in samples]


def median_seconds(
    fn: Callable[[], Any], repeats: int = 7, warmup: int = 1, min_time: float = 0.0
) -> float:
    """The median of `measure`."""
    return measure(fn, repeats, warmup, min_time).median


# ---------------------------------------------------------------------------
# The machine's limits


def last_level_cache_bytes() -> int:
    """The largest CPU cache, from sysfs (32 MiB if it cannot be read)."""
    sizes: list[int] = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes, default=32 << 20)


def cache_resident(working_set_bytes: int) -> bool:
    """Whether a working set may stay in the caches between repetitions
    (then bandwidth figures can exceed the memory's).  A cyclic scan of data
    much larger than an LRU-like cache misses on nearly every line, so the
    bound is 1.5x the last-level cache, not a multiple of it."""
    return working_set_bytes < 1.5 * last_level_cache_bytes()


# fastmath lets LLVM reorder the reduction so it vectorizes; without it the
# sum is bound by the adder's latency.
@njit(parallel=True, fastmath=True, cache=True)
def numba_sum(a: Any) -> Any:
    acc = np.float32(0.0)
    for i in prange(a.size):
        acc += a[i]
    return acc


@njit(parallel=True, cache=True)
def _numba_copy(dst: Any, src: Any) -> None:
    chunks = 64
    n = src.size
    for c in prange(chunks):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        dst[lo:hi] = src[lo:hi]


def _in_threads(fn: Callable[[int, int], Any], n: int) -> None:
    threads = numba.get_num_threads()
    bounds = [n * i // threads for i in range(threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, bounds[:-1], bounds[1:]))


@dataclass(frozen=True)
class Limit:
    """A bandwidth limit: the best probe, with every probe's figure."""

    gbs: float
    probes: dict[str, float] = field(default_factory=dict[str, float])

    @property
    def best(self) -> str:
        return max(self.probes, key=self.probes.__getitem__)

    def describe(self) -> str:
        each = ", ".join(f"{k} {v:.1f}" for k, v in self.probes.items())
        return f"{self.gbs:.1f} GB/s (best of: {each})"


def read_probes(a: np.ndarray[Any, Any]) -> dict[str, Callable[[], Any]]:
    """Ways to read every byte of the float32 array `a` once, in parallel:
    a Numba sum, numpy sums in threads and torch.sum (when installed)."""
    probes: dict[str, Callable[[], Any]] = {
        "numba sum": lambda: numba_sum(a),
        "numpy sum in threads": lambda: _in_threads(
            lambda lo, hi: a[lo:hi].sum(), a.size
        ),
    }
    torch_sum = _torch_probe(a, "sum")
    if torch_sum is not None:
        probes["torch.sum"] = torch_sum
    return probes


_AHEAD_LINES = 8
"""Cache lines of the next run that one of `paged_read`'s walks prefetches:
measured here, 8 lines made an i8 or f16 walk 5-10% faster than none.
Another walk prefetches the whole next run: on 2026-12-07 that read GQA
32/8 f16 at block 16 (8 KiB runs) 1.13x faster than 16 lines and f32
(16 KiB) 1.03x, and was 0.93-0.98x of it at block 64 (batch 8 x 8192
tokens, alternated in one process), so the walk takes the best of the
three."""


@njit(parallel=True, fastmath=True, cache=True)
def paged_sum(
    runs: Any, block_table: Any, blocks_per_seq: Any, pool_bytes: Any, ahead: Any
) -> Any:
    """The sum of every (block, head) run that decode attention over
    `block_table` reads, one (sequence, head) per parallel item, its blocks
    in table order (`runs` is ``[blocks, heads, elements]`` float32).  The
    first `ahead` cache lines of the next run (0: none) are prefetched into
    L2 as each run begins (`pool_bytes`: the pool's bytes, flat), which
    starts the hardware's stream there early."""
    batch = block_table.shape[0]
    heads = runs.shape[1]
    n = runs.shape[2]
    run_bytes = pool_bytes.size // (runs.shape[0] * heads)
    totals = np.zeros(batch * heads, dtype=np.float32)
    for item in prange(batch * heads):
        b = item // heads
        h = item % heads
        acc = np.float32(0.0)
        count = blocks_per_seq[b]
        for j in range(count):
            block = block_table[b, j]
            if ahead > 0 and j + 1 < count:
                following = (block_table[b, j + 1] * heads + h) * run_bytes
                for line in range(min(ahead * 64, run_bytes) // 64):
                    prefetch_line(pool_bytes, following + 64 * line)  # pyright: ignore[reportCallIssue]
            for x in range(n):
                acc += runs[block, h, x]
        totals[item] = acc
    return totals.sum()


def paged_read(
    layer_pool: np.ndarray[Any, Any], block_table: np.ndarray[Any, Any],
    blocks_per_seq: np.ndarray[Any, Any], repeats: int = 7,
) -> tuple[float, Timing]:  # fmt: skip
    """Read bandwidth (GB/s) over the scattered runs a decode reads: each
    sequence's blocks of one layer's pool (``[blocks, heads, ...]``, any
    element type), one run of contiguous bytes per block and head, as
    `paged_sum` walks them; and its timing.  A paged kernel reads the same
    runs in the same order, so this is its memory ceiling: the hardware's
    prefetchers lose the stream at each run's end, which the plain
    `read_limit` never sees.  The walk is timed three ways, the best taken:
    no prefetch, the next run's first `_AHEAD_LINES` lines, the whole next
    run."""
    blocks, heads = layer_pool.shape[:2]
    run_bytes = layer_pool[0, 0].nbytes
    pool_bytes = layer_pool.reshape(-1).view(np.uint8)
    usable = run_bytes - run_bytes % 4  # whole float32 words of each run
    runs = pool_bytes.reshape(blocks, heads, run_bytes)[:, :, :usable]
    runs = runs.view(np.float32)
    timing = min(
        (
            measure(
                lambda a=ahead: paged_sum(
                    runs, block_table, blocks_per_seq, pool_bytes, a
                ),
                repeats,
                warmup=1,
            )
            for ahead in (0, _AHEAD_LINES, -(-run_bytes // 64))
        ),
        key=lambda t: t.median,
    )
    read = int(blocks_per_seq.sum()) * heads * usable
    return read / timing.median / 1e9, timing


def read_limit(nbytes: int = LIMIT_BYTES, repeats: int = 5) -> Limit:
    """Sustained read bandwidth (GB/s): the best of `read_probes` over
    `nbytes`."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    probes = read_probes(a)
    figures = {
        name: nbytes / measure(fn, repeats, warmup=1).median / 1e9
        for name, fn in probes.items()
    }
    return Limit(max(figures.values()), figures)


def copy_limit(nbytes: int = LIMIT_BYTES, repeats: int = 5) -> Limit:
    """Sustained copy bandwidth (GB/s, bytes read + bytes written): the best
    of a parallel Numba copy, numpy copies in threads and torch's copy."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    probes: dict[str, Callable[[], Any]] = {
        "numba copy": lambda: _numba_copy(dst, src),
        "numpy copy in threads": lambda: _in_threads(
            lambda lo, hi: np.copyto(dst[lo:hi], src[lo:hi]), src.size
        ),
    }
    torch_copy = _torch_probe(src, "copy", dst)
    if torch_copy is not None:
        probes["torch copy_"] = torch_copy
    figures = {
        name: 2 * nbytes / measure(fn, repeats, warmup=1).median / 1e9
        for name, fn in probes.items()
    }
    return Limit(max(figures.values()), figures)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _torch_probe(
    a: np.ndarray[Any, Any], what: str, out: np.ndarray[Any, Any] | None = None
) -> Callable[[], Any] | None:
    if not torch_available():
        return None
    import torch

    torch.set_num_threads(numba.get_num_threads())
    ta = torch.from_numpy(a)
    if what == "sum":
        return lambda: ta.sum()
    assert out is not None
    tout = torch.from_numpy(out)
    return lambda: tout.copy_(ta)


# ---------------------------------------------------------------------------
# Tables


@dataclass
class Table:
    """Rows of one benchmark table, printed once and kept for JSON.

    A row is a dict; `columns` names the keys to print, in order.  `Timing`
    values print as their median (in ms unless the column says us) with the
    spread; rows with an unstable timing or a cache-resident working set
    get a note.
    """

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    notes: list[str] = field(default_factory=list[str])

    def add(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        return row

    def print(self) -> None:
        print(self.title)
        cells = [
            [_cell(column, row.get(column)) for column in self.columns]
            for row in self.rows
        ]
        headers = [*self.columns, "note"]
        for row, line in zip(self.rows, cells, strict=True):
            line.append(_note(row))
        widths = [
            max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
            for i, h in enumerate(headers)
        ]
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for line in cells:
            print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
        for note in self.notes:
            print(note)
        print()

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": [
                {**{k: _json(v) for k, v in row.items()}, "note": _note(row)}
                for row in self.rows
            ],
            "notes": self.notes,
        }


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Timing):
        scale = 1e6 if "us" in column.replace("/", " ").split() else 1e3
        q1, q3 = value.quartiles
        return f"{value.median * scale:.2f} ±{(q3 - q1) / 2 * scale:.2f}"
    if isinstance(value, float):
        if value == 0.0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def _note(row: dict[str, Any]) -> str:
    notes: list[str] = []
    if any(isinstance(v, Timing) and v.unstable for v in row.values()):
        notes.append("unstable")
    working_set = row.get("working_set_bytes")
    if isinstance(working_set, int) and cache_resident(working_set):
        notes.append("cache-resident")
    return ", ".join(notes)


def _json(value: Any) -> Any:
    if isinstance(value, Timing):
        return value.as_dict()
    if isinstance(value, np.generic):
        return value.item()
    return value


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as an aligned plain-text table (for tables without
    timings, e.g. the GPU benchmark's)."""
    cells = [[_cell("", c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
        for i, h in enumerate(headers)
    ]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


# ---------------------------------------------------------------------------
# The command line of every benchmark module


def benchmark_main(
    description: str,
    run: Callable[[Any], list[Table]],
    add_arguments: Callable[[Any], None] | None = None,
) -> None:
    """Parse ``--quick`` and ``--json PATH`` (and the module's own options),
    run, print each table once, and write the tables as JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="small shapes (smoke test)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the tables as JSON")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    tables = run(args)
    if args.json:
        Path(args.json).write_text(
            json.dumps([t.as_json() for t in tables], indent=1) + "\n"
        )


def progress(message: str) -> None:
    """A progress line on stderr (tables go to stdout, once)."""
    import sys

    print(message, file=sys.stderr, flush=True)
