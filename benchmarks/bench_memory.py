"""Limited-memory benchmark: swapping sequences out to the file tier and
back, against the copy bandwidth measured in the same run.

    python -m benchmarks.bench_memory [--quick] [--json PATH] [--swap-dir DIR]

1 GiB of K/V (f16, 32 layers, 8 kv heads, D = 128, block 16: 512 blocks of
2 MiB, 16 sequences of 512 tokens) is swapped out and back in.  GB/s count
the bytes read plus the bytes written, like the copy limit.  "page cache"
rows swap to a file the kernel still caches (what a swap right after
another sees while RAM lasts); the "cold" row swaps in after the file's
pages were written back and dropped (`posix_fadvise(DONTNEED)`), so it
reads from the disk.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.common import Table, Timing, benchmark_main, copy_limit, progress
from llmir.runtime import PagedKVCache

LAYERS, HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16


def _drop_page_cache(path: str, blocks: Any) -> bool:
    """Write the file back and drop its pages (first from this process's
    mapping, then from the page cache); False where the OS cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    mapping = getattr(getattr(blocks, "base", None), "_mmap", None)
    if mapping is None or not hasattr(mapping, "madvise"):
        return False
    mapping.flush()
    mapping.madvise(mmap.MADV_DONTNEED)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def swap_rows(
    table: Table, gib: float, directory: str, limit: float, repeats: int
) -> None:
    seqs = 16
    tokens = int(gib * (1 << 30)) // (seqs * 2 * LAYERS * HEADS * HEAD_DIM * 2)
    tokens -= tokens % BLOCK
    blocks = seqs * tokens // BLOCK
    cache = PagedKVCache(
        LAYERS,
        HEADS,
        HEAD_DIM,
        BLOCK,
        tokens,
        "f16",
        num_blocks=blocks,
        swap_blocks=blocks,
        swap_dir=directory,
    )
    ids = list(range(seqs))
    x = np.ones((LAYERS, 1, tokens, HEADS, HEAD_DIM), np.float16)
    for seq in ids:
        cache.append_kv_all_layers(x, x, [seq])
    moved = blocks * cache.geometry.bytes_per_block
    outs: list[float] = []
    ins: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        cache.swap_out(ids)
        outs.append(time.perf_counter() - start)
        start = time.perf_counter()
        cache.swap_in(ids)
        ins.append(time.perf_counter() - start)
    for label, samples in (
        ("swap out, page cache", outs),
        ("swap in, page cache", ins),
    ):
        timing = Timing(tuple(samples))
        gbs = 2 * moved / timing.median / 1e9
        table.add(
            operation=f"{label}: {moved / (1 << 30):.2f} GiB",
            ms=timing,
            **{"GB/s": gbs, "% of copy": 100 * gbs / limit},
        )
    cache.swap_out(ids)
    path = cache.sequences.swap.space.path  # pyright: ignore[reportOptionalMemberAccess]
    blocks_array = cache.sequences.swap.space.blocks  # pyright: ignore[reportOptionalMemberAccess]
    if path is not None and _drop_page_cache(path, blocks_array):
        start = time.perf_counter()
        cache.swap_in(ids)
        cold = time.perf_counter() - start
        gbs = 2 * moved / cold / 1e9
        table.add(
            operation=f"swap in, cold (from disk): {moved / (1 << 30):.2f} GiB",
            ms=Timing((cold,)),
            **{"GB/s": gbs, "% of copy": 100 * gbs / limit},
        )
    cache.close()


def run(args: Any) -> list[Table]:
    quick = bool(args.quick)
    limit = copy_limit(nbytes=(1 << 26) if quick else (1 << 30))
    print(f"copy bandwidth (read + write, measured now): {limit.describe()}")
    table = Table(
        "Swapping to the file tier (f16, 32 layers, 8 kv heads, D=128, block 16)",
        ["operation", "ms", "GB/s", "% of copy"],
    )
    directory = args.swap_dir or tempfile.gettempdir()
    progress(f"swapping through {directory} ...")
    swap_rows(table, 1 / 16 if quick else 1.0, directory, limit.gbs, 3 if quick else 5)
    table.print()
    return [table]


def main() -> None:
    benchmark_main(
        (__doc__ or "").splitlines()[0],
        run,
        lambda parser: parser.add_argument(
            "--swap-dir", help="directory of the swap file (default: the temp dir)"
        ),
    )


if __name__ == "__main__":
    main()
