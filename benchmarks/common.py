"""Shared measurement helpers for the benchmarks: timing by median of several
runs, the machine's memory bandwidth measured in the same process, and a
plain-text table printer.

Bandwidth is measured, never assumed: every benchmark reports its figures as a
fraction of what this machine sustained a moment earlier.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numba import njit, prange  # pyright: ignore[reportUnknownVariableType]

_BANDWIDTH_BYTES = 1 << 30  # 1 GiB: far beyond any cache


def median_seconds(
    fn: Callable[[], Any], repeats: int = 7, warmup: int = 1, min_time: float = 0.0
) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs.

    With `min_time` > 0, each run loops `fn` until at least that long has
    passed and reports the time per call (for microsecond-scale work).
    """
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
    return statistics.median(samples)


# fastmath lets LLVM reorder the reduction so it vectorizes; without it (or
# with hand-made chunks, which LLVM did not vectorize here) the sum is bound by
# the adder's latency and measures ~10 GB/s instead of the memory's ~37 GB/s.
@njit(parallel=True, fastmath=True, cache=True)
def _parallel_sum(a: Any) -> Any:
    acc = np.float32(0.0)
    for i in prange(a.size):
        acc += a[i]
    return acc


@njit(parallel=True, cache=True)
def _parallel_copy(dst: Any, src: Any) -> None:
    chunks = 64
    n = src.size
    for c in prange(chunks):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        dst[lo:hi] = src[lo:hi]


def read_bandwidth_gbs(nbytes: int = _BANDWIDTH_BYTES, repeats: int = 5) -> float:
    """Sustained read bandwidth (GB/s): a parallel Numba sum over `nbytes`."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    t = median_seconds(lambda: _parallel_sum(a), repeats=repeats)
    return nbytes / t / 1e9


def copy_bandwidth_gbs(nbytes: int = _BANDWIDTH_BYTES, repeats: int = 5) -> float:
    """Sustained copy bandwidth (GB/s, bytes read + bytes written): a parallel
    Numba copy of `nbytes`."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t = median_seconds(lambda: _parallel_copy(dst, src), repeats=repeats)
    return 2 * nbytes / t / 1e9


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as an aligned plain-text table."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
        for i, h in enumerate(headers)
    ]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)
