"""`ShardedKVCache` over Ray actors: bit-identical (f32) to one
`PagedKVCache` on every operation of the protocol, by kv heads and by
layers; faults surface as `ShardError` naming the shard, never as a hang;
bad input changes nothing."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmir import PagedKVCache
from llmir.errors import ConfigError, ShardError
from llmir.interpreters.runner import run_function, sharded_caches
from llmir.testing.conformance import (
    BLOCK,
    HEAD_DIM,
    HEADS,
    LAYERS,
    protocol_trace,
    sharing_trace,
)

EXAMPLES = Path(__file__).parents[3] / "examples"
BY = ["heads", "layers"]


def sharded(by: str, dtype: str = "f32", **options: Any) -> Any:
    from llmir.distributed import ShardedKVCache

    return ShardedKVCache(
        LAYERS,
        HEADS,
        HEAD_DIM,
        BLOCK,
        32,
        dtype,
        shards=2,
        shard_by=by,
        num_blocks=24,
        **options,
    )


def local(dtype: str = "f32", **options: Any) -> PagedKVCache:
    return PagedKVCache(
        LAYERS, HEADS, HEAD_DIM, BLOCK, 32, dtype, num_blocks=24, **options
    )


def assert_identical(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        if isinstance(w, tuple) and w and isinstance(w[0], np.ndarray):
            for a, b in zip(g, w, strict=True):
                assert a.dtype == b.dtype, name
                np.testing.assert_array_equal(a, b, err_msg=name)
        elif isinstance(w, np.ndarray):
            assert g.dtype == w.dtype, name
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            assert g == w, name


@pytest.mark.parametrize("by", BY)
def test_every_operation_is_bit_identical(ray_session: Any, by: str) -> None:
    """Appends (per layer, whole steps), tables, lookups in both forms,
    decode, GQA prefill, window, soft cap, free and reuse."""
    with sharded(by) as cache:
        got = protocol_trace(cache, np.random.default_rng(3))
    assert_identical(got, protocol_trace(local(), np.random.default_rng(3)))


@pytest.mark.parametrize("by", BY)
def test_sharing_and_reserved_steps_are_bit_identical(
    ray_session: Any, by: str
) -> None:
    with sharded(by, "f16", enable_prefix_caching=True) as cache:
        got = sharing_trace(cache)
        want_cache = local("f16", enable_prefix_caching=True)
        assert_identical(got, sharing_trace(want_cache))
        # A reserved step: one reservation, a write per layer.
        x = np.random.default_rng(0).standard_normal(
            (LAYERS, 2, 1, HEADS, HEAD_DIM), np.float32
        )
        for c in (cache, want_cache):
            slots, _, _ = c.reserve_slots([1, 2], 1)
            for layer in range(LAYERS):
                c.write_kv(x[layer], x[layer], slots, layer)
        for layer in range(LAYERS):
            np.testing.assert_array_equal(
                cache.lookup_sequences([1, 2], layer)[0],
                want_cache.lookup_sequences([1, 2], layer)[0],
            )
        np.testing.assert_array_equal(cache.kv_pool, want_cache.kv_pool)


@pytest.mark.parametrize("by", BY)
def test_the_decode_example_runs_sharded(ray_session: Any, by: str) -> None:
    program = (EXAMPLES / "decode.mlir").read_text()
    rng = np.random.default_rng(0)
    shapes = [(1, 7, 4, 32), (1, 3, 4, 32), (1, 12, 4, 32), (3, 1, 4, 32)]
    inputs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    want = run_function(program, *inputs)
    got = run_function(program, *inputs, create_cache=sharded_caches(2, by))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_shards_must_divide_the_cut(ray_session: Any) -> None:
    from llmir.distributed import ShardedKVCache

    with pytest.raises(
        ConfigError, match="3 shards do not divide the cache's 2 kv heads"
    ):
        ShardedKVCache(LAYERS, HEADS, HEAD_DIM, BLOCK, 32, shards=3, num_blocks=4)
    with pytest.raises(ConfigError, match="shard_by must be one of heads, layers"):
        ShardedKVCache(
            LAYERS, HEADS, HEAD_DIM, BLOCK, 32, shard_by="rows", num_blocks=4
        )


def test_a_closed_cache_rejects_calls_and_changes_nothing(ray_session: Any) -> None:
    cache = sharded("heads")
    x = np.zeros((1, 2, HEADS, HEAD_DIM), np.float32)
    cache.append_kv(x, x, [0])
    cache.close()
    before = cache.snapshot()
    for call in (
        lambda: cache.append_kv(x, x, [1]),
        lambda: cache.free_sequence(0),
        lambda: cache.reserve_slots([0], 1),
        lambda: cache.fork(0, 5),
    ):
        with pytest.raises(ShardError, match="closed"):
            call()
    assert cache.snapshot() == before


def _wait_until_dead(ray: Any, actor: Any) -> None:
    """ray.kill only sends the kill: a call made at once may still be served
    (seen under CI load), so wait until the actor really answers as dead."""
    exceptions = importlib.import_module("ray.exceptions")
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=5)
        except exceptions.RayActorError:
            return
        time.sleep(0.05)
    pytest.fail("the killed actor still answers after 30 s")


def test_a_dead_shard_is_named(ray_session: Any) -> None:
    cache = sharded("heads")
    x = np.zeros((1, 2, HEADS, HEAD_DIM), np.float32)
    cache.append_kv(x, x, [0])
    ray_session.kill(cache.actors[1])
    _wait_until_dead(ray_session, cache.actors[1])
    start = time.perf_counter()
    with pytest.raises(ShardError, match=r"shard 1 died \(write\)"):
        cache.append_kv(x, x, [0])
    assert time.perf_counter() - start < 10
    # From then on the cache refuses work, its bookkeeping consistent.
    with pytest.raises(ShardError, match="close\\(\\) it and build a new one"):
        cache.lookup_sequences([0])
    cache.check_invariants()
    cache.close()


def test_a_hung_shard_times_out(ray_session: Any) -> None:
    cache = sharded("layers", timeout_s=1.0)
    cache.actors[0].sleep.remote(30)  # busy: the next call waits behind it
    x = np.zeros((1, 2, HEADS, HEAD_DIM), np.float32)
    start = time.perf_counter()
    with pytest.raises(ShardError, match=r"shard 0 did not answer within 1 s"):
        cache.append_kv(x, x, [0], layer=0)
    assert time.perf_counter() - start < 5
    cache.close()


@pytest.mark.parametrize("by", BY)
def test_swapping_a_sharded_cache(ray_session: Any, by: str, tmp_path: Path) -> None:
    """Each shard's part of a block goes to the driver's tier and back."""
    with sharded(by, "bf16", swap_blocks=8, swap_dir=str(tmp_path)) as cache:
        x = np.random.default_rng(1).standard_normal(
            (LAYERS, 2, 9, HEADS, HEAD_DIM), np.float32
        )
        cache.append_kv_all_layers(x, -x, [0, 1])
        before = [cache.lookup_sequences([0], layer) for layer in range(LAYERS)]
        cache.swap_out([0])
        cache.append_kv_all_layers(x[:, :1], x[:, :1], [4])
        cache.swap_in([0])
        for layer in range(LAYERS):
            got = cache.lookup_sequences([0], layer)
            np.testing.assert_array_equal(got[0], before[layer][0])
            np.testing.assert_array_equal(got[1], before[layer][1])
        cache.check_invariants()


@pytest.mark.parametrize("by", BY)
@pytest.mark.parametrize(
    "policy",
    [
        {"window_tokens": 8, "sink_tokens": 2},
        {"window_tokens": 8, "sink_tokens": 2, "heavy_hitter_blocks": 5},
    ],
    ids=["window", "heavy-hitters"],
)
def test_pruning_a_sharded_cache_is_bit_identical(
    ray_session: Any, by: str, policy: dict[str, Any]
) -> None:
    """Sinks + window and heavy hitters: the shards' block masses join into
    the whole cache's, so the same blocks go back and outputs agree bit for
    bit with a single-process cache."""
    rng = np.random.default_rng(5)
    steps = [(6, rng)] + [(1, rng)] * 20
    with sharded(by, **policy) as cache:
        want_cache = local(**policy)
        for t, r in steps:
            x = r.standard_normal((LAYERS, 2, t, HEADS, HEAD_DIM)).astype(np.float32)
            q = r.standard_normal((2, t, 2 * HEADS, HEAD_DIM)).astype(np.float32)
            outputs = []
            for c in (cache, want_cache):
                c.append_kv_all_layers(x, -x, [0, 1])
                table, lens = c.block_table([0, 1])
                outputs.append(
                    [
                        c.paged_attention(q, table, lens, layer, sliding_window=8)
                        for layer in range(LAYERS)
                    ]
                )
            for got, want in zip(*outputs, strict=True):
                np.testing.assert_array_equal(got, want)
        assert cache.stats().blocks_pruned == want_cache.stats().blocks_pruned > 0
        np.testing.assert_array_equal(cache.blocks_of(0), want_cache.blocks_of(0))
        cache.check_invariants()
