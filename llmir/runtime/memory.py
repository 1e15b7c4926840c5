"""How much memory a pool may take, checked before it is allocated.

A pool larger than the memory of its device can never be used: numpy would
either fail with a bare `MemoryError` or, with lazily committed pages,
succeed and let the machine run out later.  Both backends check the pool's
bytes (and the bookkeeping's) against their device first and raise
`PoolTooLargeError` naming the bytes asked for and the bytes there are.
"""

from __future__ import annotations

import os

from llmir.errors import PoolTooLargeError

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
