"""One cache shared by several threads: concurrent appends to different
sequences, layer by layer, must each land in their own slots.

Before the cache held a lock around plan + commit + write, the per-layer
fast path handed one thread the slot mapping another thread had just
committed, and tokens landed in the wrong sequence's blocks.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from llmir import PagedKVCache

LAYERS, HEADS, D, B = 4, 2, 8, 4
THREADS, STEPS = 4, 60


@pytest.fixture
def fast_thread_switches() -> Iterator[None]:
    """Switch threads as often as the interpreter allows, so that races
    between the Python statements of two appends actually happen."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _append_steps(
    cache: PagedKVCache, seq_id: int, errors: list[BaseException]
) -> None:
    try:
        for step in range(STEPS):
            for layer in range(LAYERS):
                # Every element says whose token this is and where it goes.
                value = np.float32(seq_id * 10_000 + step * 10 + layer)
                k = np.full((1, 1, HEADS, D), value, np.float32)
                cache.append_kv(k, -k, [seq_id], layer=layer)
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


@pytest.mark.usefixtures("fast_thread_switches")
def test_concurrent_appends_to_different_sequences() -> None:
    cache = PagedKVCache(
        LAYERS, HEADS, D, B, STEPS, "f32", num_blocks=THREADS * STEPS // B
    )
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_append_steps, args=(cache, seq_id, errors))
        for seq_id in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for seq_id in range(THREADS):
        assert cache.seq_len(seq_id) == STEPS
        for layer in range(LAYERS):
            keys, values = cache.lookup_sequences([seq_id], layer)
            want = seq_id * 10_000 + np.arange(STEPS) * 10 + layer
            np.testing.assert_array_equal(keys[0, :, 0, 0], want)
            np.testing.assert_array_equal(values[0, :, 1, 3], -want)
    # Every block is owned by exactly one sequence.
    owned = np.concatenate([cache.blocks_of(s) for s in range(THREADS)])
    assert np.unique(owned).size == owned.size == cache.num_blocks
