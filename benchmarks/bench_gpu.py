"""The CUDA backend on a real GPU: decode and prefill attention against the
device's measured copy bandwidth, and append throughput.

    python -m benchmarks.bench_gpu                      # the rows of issue 6
    python -m benchmarks.bench_gpu --tiny --simulator   # tiny shapes, CUDA simulator

Prints, in this order:
  * the device-to-device copy bandwidth measured in this run (bytes read +
    written per second: the practical limit of a memory-bound kernel);
  * decode (Tq = 1) at batch 1/8/64 x 2048/8192 tokens, MHA 32/32 and GQA
    32/8, D = 128, f16 pool, block 16: time per call, the context splits the
    heuristic chose, GB/s of K+V read, and that as % of the copy bandwidth;
  * append throughput: a 4096-token prefill into one layer, and one decode
    step of 64 sequences into every layer of an 8-layer pool;
  * prefill of 4096 tokens (causal), MHA and GQA, as time and TFLOP/s;
  * issue 13's rows: decode at batch 8 x 8192 tokens over f16, i8 and i4
    pools (MHA 16/16, GQA 32/8, block 16 and 64), each against f16 in the
    same run and as GB/s of the bytes actually read (codes and scales), and
    quantise-on-append throughput.

Times are medians of CUDA-event timings of back-to-back launches with the
metadata already on the device (`AttentionPlan.run`), so they measure the
kernels, not the Python launch path.  Under the simulator (``--simulator``,
only sensible with ``--tiny``) the figures are meaningless; that mode exists
to prove the code paths run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (seconds)")
    parser.add_argument(
        "--simulator",
        action="store_true",
        help="run under the CUDA simulator (sets NUMBA_ENABLE_CUDASIM=1)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions")
    return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.simulator:
    if "numba" in sys.modules:
        raise SystemExit("--simulator must be set before numba is imported")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

from benchmarks.common import print_table  # noqa: E402
from llmir.runtime import cuda as kvcuda  # noqa: E402
from llmir.runtime.dtypes import ELEMENT_TYPES, F16, ElementType  # noqa: E402
from llmir.runtime.geometry import CacheGeometry  # noqa: E402
from llmir.runtime.validation import (  # noqa: E402
    check_attention_options,
    validate_block_table,
)

# A module global named ``cuda`` (the simulator swaps exactly such globals);
# raises DeviceError, saying what is missing, without a GPU or numba-cuda.
cuda = kvcuda.cuda_module()


def gpu_seconds(launch: Callable[[], Any], repeats: int, calls: int) -> float:
    """Median over `repeats` of the CUDA-event time of `calls` back-to-back
    launches, per launch (after one warm-up that also compiles)."""
    launch()
    cuda.synchronize()
    samples = []
    if kvcuda.simulator_enabled():  # the simulator's events time nothing
        for _ in range(repeats):
            begin = time.perf_counter()
            for _ in range(calls):
                launch()
            samples.append((time.perf_counter() - begin) / calls)
        return statistics.median(samples)
    for _ in range(repeats):
        start, stop = cuda.event(), cuda.event()
        start.record()
        for _ in range(calls):
            launch()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) / 1e3 / calls)
    return statistics.median(samples)


def _time_plan(
    plan: Any, pool: Any, query: Any, out: Any, repeats: int, calls: int
) -> float:
    return gpu_seconds(lambda: plan.run(pool, 0, query, out), repeats, calls)


def copy_bandwidth_gbs(nbytes: int, repeats: int) -> float:
    """Device-to-device copy: (bytes read + bytes written) per second."""
    src = cuda.device_array(nbytes // 4, dtype=np.float32)
    dst = cuda.device_array(nbytes // 4, dtype=np.float32)
    t = gpu_seconds(lambda: dst.copy_to_device(src), repeats, calls=5)
    return 2 * nbytes / t / 1e9


def _fill_kernel() -> Any:
    @cuda.jit
    def fill(bits: Any) -> None:
        # f16 values in [1, 2): finite, cheap, varied.
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < bits.size:
            bits[i] = 0x3C00 | (i * 2654435761 >> 7) & 0x3FF
            i += stride

    return fill


def pool_shape(
    layers: int, num_blocks: int, kv_heads: int, block: int, head_dim: int
) -> tuple[int, ...]:
    geometry = CacheGeometry(F16, layers, kv_heads, head_dim, block, block)
    return geometry.pool_shape(num_blocks)


def plan(
    pool: Any,
    q_shape: tuple[int, ...],
    table: Any,
    lens: Any,
    element: ElementType = F16,
) -> Any:
    _, block = kvcuda.launch.pool_heads_and_block_size(pool, element)
    checked = validate_block_table(
        table,
        lens,
        block_size=block,
        num_blocks=pool.shape[1],
        max_seq_len=table.shape[1] * block,
    )
    options = check_attention_options(q_shape[3])
    return kvcuda.launch.plan_attention(pool, element, q_shape, checked, options)


def make_pool(num_blocks: int, kv_heads: int, block: int, head_dim: int) -> Any:
    """A one-layer f16 pool in device memory, filled on the device."""
    pool = cuda.device_array(
        pool_shape(1, num_blocks, kv_heads, block, head_dim), np.uint16
    )
    flat = pool.reshape(pool.size)
    _fill_kernel()[min(4096, -(-pool.size // 256)), 256](flat)
    cuda.synchronize()
    return pool


def scattered_tables(
    rng: np.random.Generator, batch: int, blocks_each: int, num_blocks: int
) -> np.ndarray[Any, Any]:
    """Each sequence's blocks at random places in the pool (no sharing)."""
    return (
        rng.permutation(num_blocks)[: batch * blocks_each]
        .reshape(batch, blocks_each)
        .astype(np.int32)
    )


def bench_decode(sizes: dict[str, Any], limit: float, repeats: int) -> None:
    rng = np.random.default_rng(0)
    d, block = sizes["head_dim"], sizes["block"]
    rows = []
    for q_heads, kv_heads in sizes["heads"]:
        max_batch, max_ctx = max(sizes["batches"]), max(sizes["contexts"])
        num_blocks = max_batch * max_ctx // block
        pool = make_pool(num_blocks, kv_heads, block, d)
        for batch in sizes["batches"]:
            for ctx in sizes["contexts"]:
                table = scattered_tables(rng, batch, ctx // block, num_blocks)
                lens = np.full(batch, ctx, np.int32)
                q_shape = (batch, 1, q_heads, d)
                attention = plan(pool, q_shape, table, lens)
                query = cuda.to_device(rng.standard_normal(q_shape).astype(np.float32))
                out = cuda.device_array(q_shape, np.float32)
                t = _time_plan(attention, pool, query, out, repeats, sizes["calls"])
                kv_bytes = batch * ctx * kv_heads * d * 2 * F16.itemsize
                gbs = kv_bytes / t / 1e9
                rows.append(
                    (
                        f"{q_heads}/{kv_heads}",
                        batch,
                        ctx,
                        attention.num_splits,
                        t * 1e6,
                        gbs,
                        100 * gbs / limit,
                    )
                )
    print(f"\ndecode, f16, D={d}, block {block}")
    print_table(
        ["heads q/kv", "batch", "tokens", "splits", "us", "GB/s K+V", "% limit"], rows
    )


def bench_append(sizes: dict[str, Any], repeats: int) -> None:
    rng = np.random.default_rng(1)
    d, block, heads = sizes["head_dim"], sizes["block"], sizes["append_heads"]
    rows = []
    for label, layers, tokens in (
        ("prefill, 1 layer", None, sizes["append_tokens"]),
        (
            f"decode step, {sizes['append_layers']} layers",
            sizes["append_layers"],
            sizes["append_batch"],
        ),
    ):
        num_layers = layers or 1
        num_blocks = -(-tokens // block) + 1
        pool = cuda.device_array(
            pool_shape(num_layers, num_blocks, heads, block, d), np.uint16
        )
        shape = (num_layers, tokens, heads, d)
        keys = cuda.to_device(rng.standard_normal(shape).astype(np.float32))
        values = cuda.to_device(rng.standard_normal(shape).astype(np.float32))
        slots = rng.permutation(num_blocks * block)[:tokens].astype(np.int32)
        layer = 0 if layers is None else None
        t = gpu_seconds(
            lambda: kvcuda.launch.append(pool, F16, layer, keys, values, slots),  # noqa: B023
            repeats,
            sizes["calls"],
        )
        moved = (
            2 * num_layers * tokens * heads * d * (4 + F16.itemsize)
        )  # read f32, write f16
        rows.append(
            (label, tokens, t * 1e6, num_layers * tokens / t / 1e6, moved / t / 1e9)
        )
    print(
        f"\nappend (f32 in, f16 stored), {heads} heads, D={d} "
        "(times include the slot-mapping copy)"
    )
    print_table(["case", "tokens", "us", "Mtok*layer/s", "GB/s r+w"], rows)


def bench_prefill(sizes: dict[str, Any], repeats: int) -> None:
    rng = np.random.default_rng(2)
    d, block, tokens = sizes["head_dim"], sizes["block"], sizes["prefill_tokens"]
    rows = []
    for q_heads, kv_heads in sizes["heads"]:
        num_blocks = tokens // block
        pool = make_pool(num_blocks, kv_heads, block, d)
        table = scattered_tables(rng, 1, num_blocks, num_blocks)
        q_shape = (1, tokens, q_heads, d)
        attention = plan(pool, q_shape, table, np.array([tokens], np.int32))
        query = cuda.to_device(rng.standard_normal(q_shape).astype(np.float32))
        out = cuda.device_array(q_shape, np.float32)
        t = _time_plan(attention, pool, query, out, repeats, 1)
        flops = 2 * 2 * q_heads * d * tokens * (tokens + 1) / 2  # QK^T and PV, causal
        rows.append((f"{q_heads}/{kv_heads}", tokens, t * 1e3, flops / t / 1e12))
    print(f"\nprefill, causal, f16, D={d}, block {block}")
    print_table(["heads q/kv", "tokens", "ms", "TFLOP/s"], rows)


def quantized_pool(
    element: ElementType, num_blocks: int, kv_heads: int, block: int, head_dim: int
) -> Any:
    """A one-layer pool of `element` in device memory whose every block holds
    the same real quantised tokens: one block appended, then copied over
    the pool on the device (random bytes would make NaN scales)."""
    geometry = CacheGeometry(element, 1, kv_heads, head_dim, block, block)
    pool = cuda.device_array(geometry.pool_shape(num_blocks), element.storage_dtype)
    rng = np.random.default_rng(3)
    keys = rng.standard_normal((1, block, kv_heads, head_dim)).astype(np.float32)
    slots = np.arange(block, dtype=np.int32)
    kvcuda.launch.append(pool, element, 0, keys, keys[..., ::-1].copy(), slots)
    copies = np.arange(1, num_blocks, dtype=np.int32)
    kvcuda.launch.copy_blocks(pool, element, np.zeros_like(copies), copies, None)
    cuda.synchronize()
    return pool


def bench_quantized(sizes: dict[str, Any], limit: float, repeats: int) -> None:
    """Decode over f16, i8 and i4 pools of the same tokens (issue 13's
    rows), and quantise-on-append throughput."""
    rng = np.random.default_rng(4)
    d, batch, ctx = (
        sizes["quant_head_dim"],
        sizes["quant_batch"],
        sizes["quant_context"],
    )
    rows = []
    for block in sizes["quant_blocks"]:
        for q_heads, kv_heads in sizes["quant_heads"]:
            num_blocks = batch * ctx // block
            table = scattered_tables(rng, batch, ctx // block, num_blocks)
            lens = np.full(batch, ctx, np.int32)
            q_shape = (batch, 1, q_heads, d)
            query = cuda.to_device(rng.standard_normal(q_shape).astype(np.float32))
            out = cuda.device_array(q_shape, np.float32)
            f16_time = None
            for name in ("f16", "i8", "i4"):
                element = ELEMENT_TYPES[name]
                pool = (
                    make_pool(num_blocks, kv_heads, block, d)
                    if element is F16
                    else quantized_pool(element, num_blocks, kv_heads, block, d)
                )
                attention = plan(pool, q_shape, table, lens, element)
                t = _time_plan(attention, pool, query, out, repeats, sizes["calls"])
                f16_time = f16_time or t
                read = batch * ctx * kv_heads * element.kv_row_bytes(d, block)
                gbs = read / t / 1e9
                rows.append(
                    (name, block, f"{q_heads}/{kv_heads}", t * 1e6, f16_time / t,
                     gbs, 100 * gbs / limit)
                )  # fmt: skip
                del pool
    print(f"\ndecode over quantized pools, batch {batch}, {ctx} tokens, D={d}")
    print_table(
        ["type", "block", "heads q/kv", "us", "x f16", "GB/s read", "% limit"], rows
    )
    rows = []
    tokens, heads, block = sizes["append_tokens"], sizes["append_heads"], 16
    shape = (1, tokens, heads, d)
    keys = cuda.to_device(rng.standard_normal(shape).astype(np.float32))
    values = cuda.to_device(rng.standard_normal(shape).astype(np.float32))
    for name in ("f16", "i8", "i4"):
        element = ELEMENT_TYPES[name]
        geometry = CacheGeometry(element, 1, heads, d, block, block)
        pool = cuda.device_array(
            geometry.pool_shape(-(-tokens // block)), element.storage_dtype
        )
        slots = np.arange(tokens, dtype=np.int32)
        t = gpu_seconds(
            lambda: kvcuda.launch.append(pool, element, 0, keys, values, slots),  # noqa: B023
            repeats,
            sizes["calls"],
        )
        rows.append((name, tokens, t * 1e6, 2 * keys.nbytes / t / 1e9))
    print(f"\nappend (quantise), a {tokens}-token prefill, {heads} heads, D={d}")
    print_table(["type", "tokens", "us", "GB/s of f32 input"], rows)


FULL: dict[str, Any] = {
    "heads": [(32, 32), (32, 8)],
    "batches": [1, 8, 64],
    "contexts": [2048, 8192],
    "head_dim": 128,
    "block": 16,
    "calls": 10,
    "append_heads": 32,
    "append_tokens": 4096,
    "append_layers": 8,
    "append_batch": 64,
    "prefill_tokens": 4096,
    "copy_bytes": 1 << 30,
    "quant_heads": [(16, 16), (32, 8)],
    "quant_blocks": [16, 64],
    "quant_head_dim": 128,
    "quant_batch": 8,
    "quant_context": 8192,
}
TINY: dict[str, Any] = {
    "heads": [(2, 2), (4, 2)],
    "batches": [1, 2],
    "contexts": [8, 16],
    "head_dim": 8,
    "block": 4,
    "calls": 1,
    "append_heads": 2,
    "append_tokens": 8,
    "append_layers": 2,
    "append_batch": 2,
    "prefill_tokens": 8,
    "copy_bytes": 1 << 12,
    "quant_heads": [(2, 1)],
    "quant_blocks": [4],
    "quant_head_dim": 32,
    "quant_batch": 1,
    "quant_context": 8,
}


def main(args: argparse.Namespace) -> None:
    sizes = TINY if args.tiny else FULL
    repeats = 1 if args.tiny else args.repeats
    print(f"device: {kvcuda.describe()}")
    limit = copy_bandwidth_gbs(sizes["copy_bytes"], repeats)
    print(f"device-to-device copy bandwidth (read + write): {limit:.1f} GB/s")
    bench_decode(sizes, limit, repeats)
    bench_append(sizes, repeats)
    bench_prefill(sizes, repeats)
    bench_quantized(sizes, limit, repeats)


if __name__ == "__main__":
    assert ARGS is not None
    main(ARGS)
