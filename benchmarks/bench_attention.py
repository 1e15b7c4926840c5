"""Paged attention on the CPU: decode and prefill against the memory limit,
torch SDPA and numpy.

    python -m benchmarks.bench_attention           # every row
    python -m benchmarks.bench_attention --quick   # batch 8, 2048 tokens only

Prints the read bandwidth measured in this run (the best of several probes
over 1 GiB); then per decode shape the kernel's median time and spread, the
GB/s of K+V it reads, that as % of the limit, and how many times faster it is
than torch SDPA on contiguous (unpaged) K/V of the same dtype (for GQA the
faster of `enable_gqa` and the groups folded into the query length) and than numpy
(gather the blocks, then f32 matmul + softmax); then prefill of 2048 tokens
against torch SDPA with a causal mask; then what a soft cap of 30 and a
sliding window of 512 cost against plain causal attention (prefill, and
GQA decode at batch 8); last, the fixed cost of a call (its checks and
launch) on a one-block context.  The torch columns are empty, with a
one-line hint, when torch (the ``bench`` extra) is not installed.  Both
libraries run with the same thread count as Numba.  Rows whose K/V are not
much larger than the last-level cache are marked cache-resident.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from benchmarks.common import (
    TORCH_HINT,
    Table,
    benchmark_main,
    measure,
    measure_alternated,
    median_seconds,
    progress,
    read_limit,
    torch_available,
)
from llmir import PagedKVCache, paged_attention
from llmir.runtime.cpu.attention_kernels import run_paged_attention
from llmir.runtime.dtypes import ElementType, decode, element_type
from llmir.runtime.geometry import KEY, VALUE

HEAD_DIM = 128
PREFILL_TOKENS = 2048


@dataclass(frozen=True)
class Shape:
    batch: int
    context: int
    q_heads: int
    kv_heads: int
    block_size: int
    kind: ElementType
    queries: int = 1

    @property
    def label(self) -> str:
        return f"{self.q_heads}/{self.kv_heads}"


@dataclass
class Workload:
    """A paged pool holding `batch` sequences of `context` tokens in shuffled
    blocks, plus the same K/V as dense float arrays for the peers."""

    shape: Shape
    cache: PagedKVCache
    block_table: npt.NDArray[np.int32]
    seq_lens: npt.NDArray[np.int32]
    query: npt.NDArray[np.float32]

    @property
    def layer_pool(self) -> npt.NDArray[Any]:
        return self.cache.kv_pool[0]

    @property
    def kv_bytes(self) -> int:
        """Bytes of K and V the kernel must read (the whole pool here)."""
        return self.layer_pool.nbytes


def make_workload(shape: Shape, rng: np.random.Generator) -> Workload:
    """A one-layer cache whose pool is filled directly (the bookkeeping is
    not involved: attention takes any valid block table)."""
    blocks_per_seq = shape.context // shape.block_size
    num_blocks = shape.batch * blocks_per_seq
    cache = PagedKVCache(
        1,
        shape.kv_heads,
        HEAD_DIM,
        shape.block_size,
        shape.context,
        shape.kind,
        num_blocks=num_blocks,
    )
    layer_pool = cache.kv_pool[0]
    for block in range(num_blocks):  # encode block by block: no 2x peak memory
        layer_pool[block] = shape.kind.encode(
            rng.standard_normal(layer_pool.shape[1:], dtype=np.float32)
        )
    table = rng.permutation(num_blocks).astype(np.int32).reshape(shape.batch, -1)
    lens = np.full(shape.batch, shape.context, np.int32)
    query = rng.standard_normal(
        (shape.batch, shape.queries, shape.q_heads, HEAD_DIM), dtype=np.float32
    )
    return Workload(shape, cache, table, lens, query)


def dense_kv(work: Workload) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Keys and values as float32 ``[batch, H, context, D]`` (gathered)."""
    s = work.shape
    blocks = work.layer_pool[work.block_table]  # [b, n, H, 2, B, D]
    k = (
        blocks[:, :, :, KEY]
        .transpose(0, 2, 1, 3, 4)
        .reshape(s.batch, s.kv_heads, -1, HEAD_DIM)
    )
    v = (
        blocks[:, :, :, VALUE]
        .transpose(0, 2, 1, 3, 4)
        .reshape(s.batch, s.kv_heads, -1, HEAD_DIM)
    )
    return decode(k, s.kind), decode(v, s.kind)


def numpy_decode(work: Workload) -> npt.NDArray[np.float32]:
    """The numpy peer: gather the blocks, decode, f32 matmul + softmax."""
    s = work.shape
    k, v = dense_kv(work)
    group = s.q_heads // s.kv_heads
    q = work.query[:, 0].reshape(s.batch, s.kv_heads, group, HEAD_DIM)
    logits = q @ k.transpose(0, 1, 3, 2) * np.float32(HEAD_DIM**-0.5)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=-1, keepdims=True)
    return (weights @ v).reshape(s.batch, 1, s.q_heads, HEAD_DIM)


def torch_sdpa(
    work: Workload, causal: bool, fold_groups: bool = False
) -> Callable[[], Any] | None:
    """A call of torch SDPA on contiguous K/V of the pool's dtype, or None
    without torch.  GQA goes through `enable_gqa`, or with `fold_groups`
    (decode only) as plain attention of each kv head's G query heads as G
    queries, which turns the scores into one matrix product per head."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(numba.get_num_threads())
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[
        work.shape.kind.name
    ]
    k, v = dense_kv(work)
    tk = torch.from_numpy(k).to(dtype).contiguous()
    tv = torch.from_numpy(v).to(dtype).contiguous()
    tq = torch.from_numpy(work.query).transpose(1, 2).to(dtype).contiguous()
    gqa = work.shape.q_heads != work.shape.kv_heads
    if fold_groups:
        if not gqa or causal or work.shape.queries != 1:
            return None
        s = work.shape
        # [batch, Hq, 1, D] -> [batch, H, G, D]: query head j is row j % G of
        # kv head j // G, as in GQA.
        tq = tq.reshape(s.batch, s.kv_heads, s.q_heads // s.kv_heads, HEAD_DIM)
        gqa = False

    def run() -> Any:
        with torch.inference_mode():
            return F.scaled_dot_product_attention(
                tq, tk, tv, is_causal=causal, enable_gqa=gqa
            )

    return run


def ours(work: Workload) -> Callable[[], Any]:
    out = np.empty(work.query.shape, np.float32)

    def run() -> Any:
        w = work
        return paged_attention(w.query, w.cache, w.block_table, w.seq_lens, out=out)

    return run


def ratio(peer_seconds: float | None, our_seconds: float) -> str:
    return "-" if peer_seconds is None else f"{peer_seconds / our_seconds:.2f}x"


def decode_rows(shapes: list[Shape], limit_gbs: float, repeats: int) -> Table:
    rng = np.random.default_rng(0)
    table = Table(
        "decode (Tq = 1, D = 128)",
        ["batch", "context", "Hq/H", "block", "dtype", "ms", "GB/s", "% limit",
         "vs torch", "vs numpy"],
    )  # fmt: skip
    for index, shape in enumerate(shapes):
        progress(f"  decode {index + 1}/{len(shapes)}")
        work = make_workload(shape, rng)
        timing = measure(ours(work), repeats=repeats, warmup=2)
        gbs = work.kv_bytes / timing.median / 1e9
        # torch's fastest form: the better of enable_gqa and folded groups.
        forms = [torch_sdpa(work, causal=False, fold_groups=f) for f in (False, True)]
        torch_times = [
            median_seconds(form, repeats=repeats, warmup=1) for form in forms if form
        ]
        t_torch = min(torch_times) if torch_times else None
        t_numpy = median_seconds(lambda w=work: numpy_decode(w), repeats=3, warmup=0)
        table.add(
            batch=shape.batch, context=shape.context, **{"Hq/H": shape.label},
            block=shape.block_size, dtype=shape.kind.name, ms=timing,
            **{"GB/s": gbs, "% limit": 100 * gbs / limit_gbs,
               "vs torch": ratio(t_torch, timing.median),
               "vs numpy": ratio(t_numpy, timing.median)},
            working_set_bytes=work.kv_bytes,
        )  # fmt: skip
        del work
    return table


def prefill_rows(shapes: list[Shape], repeats: int) -> Table:
    rng = np.random.default_rng(1)
    table = Table(
        f"prefill ({PREFILL_TOKENS} tokens, causal, D = 128)",
        ["batch", "tokens", "Hq/H", "block", "dtype", "ms", "torch ms", "vs torch"],
    )
    for index, shape in enumerate(shapes):
        progress(f"  prefill {index + 1}/{len(shapes)}")
        work = make_workload(shape, rng)
        timing = measure(ours(work), repeats=repeats, warmup=1)
        sdpa = torch_sdpa(work, causal=True)
        t_torch = median_seconds(sdpa, repeats=repeats, warmup=1) if sdpa else None
        table.add(
            batch=shape.batch, tokens=shape.context, **{"Hq/H": shape.label},
            block=shape.block_size, dtype=shape.kind.name, ms=timing,
            **{"torch ms": None if t_torch is None else t_torch * 1e3,
               "vs torch": ratio(t_torch, timing.median)},
        )  # fmt: skip
    return table


OPTIONS: dict[str, dict[str, Any]] = {
    "causal": {},
    "soft cap 30": {"logits_soft_cap": 30.0},
    "window 512": {"sliding_window": 512},
}
"""The attention options timed against plain causal attention (Gemma 2
caps its logits at 50, Mistral's window is 4096: 30 and 512 put the cap's
tanh to work and the window's edge inside a 2048-token prompt)."""


def option_rows(shapes: list[Shape], repeats: int) -> Table:
    """What an option costs: the same workload with and without it, timed
    in turns."""
    rng = np.random.default_rng(3)
    table = Table(
        "options (causal, D = 128): time against plain causal attention",
        ["batch", "context", "queries", "Hq/H", "dtype", "option", "ms", "x causal"],
    )
    for index, shape in enumerate(shapes):
        progress(f"  options {index + 1}/{len(shapes)}")
        work = make_workload(shape, rng)
        out = np.empty(work.query.shape, np.float32)

        def call(
            options: dict[str, Any],
            w: Workload = work,
            o: npt.NDArray[np.float32] = out,
        ) -> Callable[[], Any]:
            return lambda: paged_attention(
                w.query, w.cache, w.block_table, w.seq_lens, out=o, **options
            )

        calls = [call(options) for options in OPTIONS.values()]
        timings = measure_alternated(calls, repeats=repeats)
        for name, timing in zip(OPTIONS, timings, strict=True):
            table.add(
                batch=shape.batch, context=shape.context, queries=shape.queries,
                **{"Hq/H": shape.label}, dtype=shape.kind.name, option=name, ms=timing,
                **{"x causal": timing.median / timings[0].median},
            )  # fmt: skip
        del work
    return table


def fixed_cost_rows(repeats: int) -> Table:
    """What one call costs besides its arithmetic: `paged_attention` on a
    one-block context (the checks, the planning, Numba's dispatch) against
    the kernel launched directly on already-checked arrays."""
    table = Table(
        "fixed cost per call (batch 1, 16 tokens, 32/8 heads, f16)",
        ["path", "call us", "checks us"],
    )
    work = make_workload(
        Shape(1, 16, 32, 8, 16, element_type("f16")), np.random.default_rng(2)
    )
    out = np.empty(work.query.shape, np.float32)
    cache = work.cache
    checked = cache.validate_block_table(work.block_table, work.seq_lens)

    def kernel_only() -> None:
        run_paged_attention(
            work.query, work.layer_pool, cache.element_type.code, checked.table,
            checked.lens, out, scale=1 / HEAD_DIM**0.5, max_len=checked.max_len,
        )  # fmt: skip

    call = ours(work)
    measure(kernel_only, repeats=1, warmup=200)
    measure(call, repeats=1, warmup=200)
    kernel, whole = measure_alternated([kernel_only, call], 3 * repeats, 0.02)
    table.add(path="kernel launch alone", **{"call us": kernel, "checks us": None})
    table.add(
        path="paged_attention",
        **{"call us": whole, "checks us": (whole.median - kernel.median) * 1e6},
    )
    return table


def run(args: Any) -> list[Table]:
    kinds = [element_type(k) for k in ("f32", "f16", "bf16")]
    heads = [(16, 16), (32, 8)]
    batches = (
        [(8, 2048)] if args.quick else [(8, 2048), (8, 8192), (1, 2048), (1, 8192)]
    )
    repeats = 7 if args.quick else 9

    threads = numba.get_num_threads()
    limit = read_limit()
    print(f"threads: {threads}; read bandwidth: {limit.describe()}")
    print(f"medians of {repeats} ±IQR/2; 'vs X' is X's time / ours: above 1.00x "
          "we are faster")  # fmt: skip
    if not torch_available():
        print(TORCH_HINT)
    print()

    decode_shapes = [
        Shape(b, n, hq, h, bs, kind)
        for b, n in batches
        for hq, h in heads
        for bs in (16, 64)
        for kind in kinds
    ]
    decode = decode_rows(decode_shapes, limit.gbs, repeats)
    decode.print()

    prefill_shapes = [
        Shape(1, PREFILL_TOKENS, hq, h, 16, kind, queries=PREFILL_TOKENS)
        for hq, h in heads
        for kind in (kinds[:1] if args.quick else kinds)
    ]
    prefill = prefill_rows(prefill_shapes, repeats=7)
    prefill.print()
    option_shapes = [
        Shape(1, PREFILL_TOKENS, hq, h, 16, kind, queries=PREFILL_TOKENS)
        for hq, h in heads
        for kind in (kinds[:1] if args.quick else kinds[::2])
    ] + [
        Shape(8, 2048, 32, 8, 16, kind)
        for kind in (kinds[:1] if args.quick else kinds[::2])
    ]
    options = option_rows(option_shapes, repeats=5)
    options.print()
    fixed = fixed_cost_rows(repeats)
    fixed.print()
    return [decode, prefill, options, fixed]


def main() -> None:
    benchmark_main((__doc__ or "").split("\n\n")[0], run)


if __name__ == "__main__":
    main()
