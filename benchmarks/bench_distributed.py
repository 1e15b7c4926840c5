"""Distributed benchmark: what a decode step costs on a cache sharded over
Ray actors, against the same cache in one process, and where the time goes.

    python -m benchmarks.bench_distributed [--quick] [--json PATH]

A decode step of batch 64 (f16, 4 layers, 8 kv heads, 32 query heads,
D = 128, block 16, 512 tokens of context): for each layer, append the
step's K/V and attend.  Local, 2 shards by kv heads, 2 shards by layers.
The breakdown rows time a Ray round trip that carries the same arrays to an
actor that does nothing (serialisation and scheduling), and the kernels
alone (the local step).  Needs Ray (``pip install -e '.[distributed]'``);
both shards share this machine's cores with the driver, so the sharded
cache is expected to be slower here: the point is by how much, and why.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from benchmarks.common import Table, Timing, benchmark_main, measure, progress
from llmir import PagedKVCache, paged_attention

LAYERS, KV_HEADS, Q_HEADS, HEAD_DIM, BLOCK = 4, 8, 32, 128, 16


class _Echo:
    """An actor that receives a step's arrays and does nothing."""

    def take(self, *arrays: Any) -> None:
        return None


def _step_timing(cache: Any, batch: int, context: int, repeats: int) -> Timing:
    rng = np.random.default_rng(0)
    ids = np.arange(batch)
    prompt = np.zeros((LAYERS, batch, context, KV_HEADS, HEAD_DIM), np.float32)
    cache.append_kv_all_layers(prompt, prompt, ids)
    x = rng.standard_normal((batch, 1, KV_HEADS, HEAD_DIM), np.float32)
    q = rng.standard_normal((batch, 1, Q_HEADS, HEAD_DIM), np.float32)

    def step() -> None:
        for layer in range(LAYERS):
            cache.append_kv(x, x, ids, layer)
            table, lens = cache.block_table(ids)
            paged_attention(q, cache, table, lens, layer)

    return measure(step, repeats=repeats, warmup=1)


def run(args: Any) -> list[Table]:
    if importlib.util.find_spec("ray") is None:
        print("Ray is not installed: pip install -e '.[distributed]'")
        return []
    from llmir.distributed import ShardedKVCache
    from llmir.distributed.backend import ray_module

    ray = ray_module()  # started here unless already running

    quick = bool(args.quick)
    batch, context, steps = (8, 64, 8) if quick else (64, 512, 40)
    repeats = 5 if quick else 9
    max_len = context + steps * 12
    blocks = batch * -(-max_len // BLOCK)
    table = Table(
        f"Decode step, batch {batch}, {LAYERS} layers x (append + attention), f16, "
        f"{Q_HEADS}/{KV_HEADS} heads, D={HEAD_DIM}, {context} tokens of context",
        ["cache", "ms per step", "vs local"],
    )
    progress("local ...")
    local = PagedKVCache(
        LAYERS, KV_HEADS, HEAD_DIM, BLOCK, max_len, "f16", num_blocks=blocks
    )
    base = _step_timing(local, batch, context, repeats)
    table.add(cache="local (one process)", **{"ms per step": base, "vs local": "1.00x"})
    for by in ("heads", "layers"):
        progress(f"2 shards by {by} ...")
        with ShardedKVCache(
            LAYERS,
            KV_HEADS,
            HEAD_DIM,
            BLOCK,
            max_len,
            "f16",
            shards=2,
            shard_by=by,
            num_blocks=blocks,
            timeout_s=60,
        ) as cache:
            timing = _step_timing(cache, batch, context, repeats)
        table.add(
            cache=f"2 shards by {by} (Ray actors)",
            **{
                "ms per step": timing,
                "vs local": f"{timing.median / base.median:.2f}x",
            },
        )
    # Where it goes: Ray carrying the same arrays to an actor doing nothing.
    echo: Any = ray.remote(_Echo).options(num_cpus=0).remote()
    x = np.zeros((batch, 1, KV_HEADS // 2, HEAD_DIM), np.float32)
    q = np.zeros((batch, 1, Q_HEADS // 2, HEAD_DIM), np.float32)
    slots = np.zeros(batch, np.int32)
    tables = np.zeros((batch, -(-context // BLOCK) + 1), np.int32)

    def transport() -> None:
        for _ in range(LAYERS):  # per layer: a write and an attention call
            ray.get(echo.take.remote(x, x, slots))
            ray.get(echo.take.remote(q, tables))

    trip = measure(transport, repeats=repeats, warmup=1)
    table.add(
        cache=f"of which Ray round trips ({2 * LAYERS} calls, no work)",
        **{"ms per step": trip, "vs local": "-"},
    )
    table.print()
    return [table]


def main() -> None:
    benchmark_main((__doc__ or "").splitlines()[0], run)


if __name__ == "__main__":
    main()
