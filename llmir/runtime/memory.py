"""How much memory a pool takes, and may take.

Planning: `MemoryPlan` is what a number of blocks costs and holds, counted
one way for everyone (the `llm-plan-kv-memory` pass, `llm-kv-cache-stats`,
`PagedKVCache(memory_budget_bytes=...)` and its `stats()`): a block's K/V
bytes plus the allocator's per-block bookkeeping.

Checking: a pool must fit its device before it is allocated.

A pool larger than the memory of its device can never be used: numpy would
either fail with a bare `MemoryError` or, with lazily committed pages,
succeed and let the machine run out later.  Both backends check the pool's
bytes (and the bookkeeping's) against their device first and raise
`PoolTooLargeError` naming the bytes asked for and the bytes there are.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from llmir.errors import ConfigError, PoolTooLargeError
from llmir.runtime.geometry import CacheGeometry

BOOKKEEPING_BYTES_PER_BLOCK = 12
"""The allocator's per-block state: free stack, ref count, tokens filled
(three int32)."""


def format_bytes(count: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def host_memory_bytes() -> int:
    """Physical memory of this machine (0 if the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return 0


def check_fits(what: str, needed: int, available: int, where: str) -> None:
    """Raise `PoolTooLargeError` when `needed` bytes exceed `available`
    (an `available` of 0 means unknown: nothing is checked)."""
    if available and needed > available:
        raise PoolTooLargeError(
            f"{what} needs {format_bytes(needed)} ({needed} bytes), more than the "
            f"{format_bytes(available)} of {where}"
        )


# ---------------------------------------------------------------------------
# Planning


def planned_block_bytes(geometry: CacheGeometry) -> int:
    """What one block costs: its K/V bytes (all layers) and its bookkeeping."""
    return geometry.bytes_per_block + BOOKKEEPING_BYTES_PER_BLOCK


@dataclass(frozen=True)
class MemoryPlan:
    """What a pool of `blocks` blocks of one geometry costs and holds."""

    blocks: int
    tokens: int
    """Token slots (``blocks * block_size``)."""
    max_len_sequences: int
    """Sequences of `max_seq_len` tokens that fit at once."""
    pool_bytes: int
    bookkeeping_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.pool_bytes + self.bookkeeping_bytes


def plan_blocks(geometry: CacheGeometry, blocks: int) -> MemoryPlan:
    return MemoryPlan(
        blocks=blocks,
        tokens=blocks * geometry.block_size,
        max_len_sequences=blocks // geometry.max_blocks_per_seq,
        pool_bytes=geometry.pool_bytes(blocks),
        bookkeeping_bytes=blocks * BOOKKEEPING_BYTES_PER_BLOCK,
    )


def blocks_for_budget(geometry: CacheGeometry, budget: int) -> int:
    """The most blocks whose pool and bookkeeping fit in `budget` bytes (at
    most `CacheGeometry.max_num_blocks`)."""
    return min(budget // planned_block_bytes(geometry), geometry.max_num_blocks())


def split_budget(geometries: Sequence[CacheGeometry], budget: int) -> list[int]:
    """Blocks for each of several caches sharing `budget` bytes: the budget
    is split in proportion to each cache's bytes per token slot (bookkeeping
    included), so that every cache holds about the same number of tokens;
    each share is then rounded down to whole blocks."""
    per_token = [planned_block_bytes(g) / g.block_size for g in geometries]
    total = sum(per_token)
    return [
        blocks_for_budget(g, math.floor(budget * w / total))
        for g, w in zip(geometries, per_token, strict=True)
    ]


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_bytes(text: str) -> int:
    """``'8GiB'`` -> 8589934592; decimal (kB, MB, GB, TB) and binary (KiB,
    MiB, GiB, TiB) units, a plain number of bytes, fractions allowed
    (``'1.5GiB'``)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(
            f"cannot read {text!r} as a byte count: write e.g. 8GiB, 512MiB, "
            "16GB or 1000000"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if value < 1:
        raise ConfigError(f"a byte budget must be at least 1 byte, got {text!r}")
    if not value < 2.0**63:  # inf too: a float of 310 digits
        raise ConfigError(f"a byte budget must be below 2^63 bytes, got {text!r}")
    return int(value)
