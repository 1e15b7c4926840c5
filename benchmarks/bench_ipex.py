"""Decode and prefill attention side by side with Intel's IPEX
PagedAttention, decode also against a plain sum over the very same pool
bytes.

    bash scripts/ipex_venv.sh           # once: torch 2.8 + IPEX 2.8 in .ipex-venv
    python -m benchmarks.bench_ipex     # runs itself in .ipex-venv

IPEX 2.8
(``ipex.llm.modules.PagedAttention.single_query_cached_kv_attention``, the
CPU paged attention vLLM uses on Intel) needs torch 2.8, so it lives in its
own virtualenv with llmir installed; without it this prints how to make one.
Per row, in one process on identical data: our decode attention, IPEX's on
the same K/V copied into its layout (``[blocks, H, block, D]`` key and value
caches, the same block table), and the time of a parallel sum over our
pool's bytes (the best of a Numba sum, numpy sums in threads and torch.sum:
the fairest ceiling for a kernel that must read every byte once), and the
time of a sum over the pool's runs as a paged kernel reads them
(`benchmarks.common.paged_read`: each sequence's blocks of one head in
table order, where the prefetchers lose the stream at every block; the
better of two walks, without and with the next run's first lines
prefetched).
Columns: medians (±IQR/2), IPEX's time / ours (above 1.00x we are faster),
the sums' times / ours (1.00 is the read limit for this very data, read
whole or paged), and the largest
difference between the two outputs relative to the output's scale (IPEX
returns the cache's dtype, so for halves this is its output's rounding: bf16
keeps 8 bits).  Prefill (batch 1, 2048 tokens, causal) runs against
``PagedAttention.flash_attn_varlen_func``, IPEX's paged prefill, on the same
block table.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

from benchmarks.bench_attention import (
    HEAD_DIM,
    PREFILL_TOKENS,
    Shape,
    Workload,
    make_workload,
    ours,
)
from benchmarks.common import (
    Table,
    Timing,
    benchmark_main,
    measure,
    measure_alternated,
    paged_read,
    progress,
    read_probes,
)
from llmir.runtime.cpu import amx
from llmir.runtime.dtypes import element_type
from llmir.runtime.geometry import KEY, VALUE

IPEX_VENV = Path(__file__).parents[1] / ".ipex-venv"
HINT = (
    "IPEX is not installed here: it needs torch 2.8 in its own virtualenv "
    "(bash scripts/ipex_venv.sh, about 3 GB), then run this again"
)


def ipex_available() -> bool:
    return importlib.util.find_spec("intel_extension_for_pytorch") is not None


class IpexCall:
    """A workload's K/V copied into IPEX's layout (``[blocks, H, block, D]``
    key and value caches, the same block table) and its queries in the
    cache's dtype."""

    def __init__(self, work: Workload) -> None:
        import intel_extension_for_pytorch as ipex  # pyright: ignore[reportMissingImports]
        import torch

        s = work.shape
        dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[
            s.kind.name
        ]
        pool = torch.from_numpy(work.layer_pool)  # [blocks, H, 2, B, D] raw bits
        if s.kind.name != "f32":
            pool = pool.view(dtype)
        self.key_cache = pool[:, :, KEY].contiguous()
        self.value_cache = pool[:, :, VALUE].contiguous()
        # [batch, queries, Hq, D] -> [batch * queries, Hq, D]: IPEX's tokens.
        self.query = (
            torch.from_numpy(work.query.reshape(-1, s.q_heads, HEAD_DIM))
            .to(dtype)
            .contiguous()
        )
        self.out = torch.empty_like(self.query)
        self.block_table = torch.from_numpy(work.block_table)
        self.seq_lens = torch.from_numpy(work.seq_lens)
        self.max_len = int(work.seq_lens.max())
        self.scale = float(HEAD_DIM**-0.5)
        self.shape = s
        self._ops = ipex.llm.modules.PagedAttention
        self._torch = torch

    def __call__(self) -> Any:
        """One call of IPEX's kernel, writing `out`."""
        raise NotImplementedError

    def result(self) -> np.ndarray[Any, Any]:
        """The last output as float32 ``[batch, queries, Hq, D]``."""
        s = self.shape
        return self.out.float().numpy().reshape(s.batch, s.queries, s.q_heads, -1)


class IpexDecode(IpexCall):
    """IPEX's decode attention (``single_query_cached_kv_attention``)."""

    def __init__(self, work: Workload) -> None:
        super().__init__(work)
        s = work.shape
        group = s.q_heads // s.kv_heads
        self.head_mapping = self._torch.arange(
            s.kv_heads, dtype=self._torch.int32
        ).repeat_interleave(group)

    def __call__(self) -> Any:
        with self._torch.inference_mode():
            self._ops.single_query_cached_kv_attention(
                self.out, self.query, self.key_cache, self.value_cache,
                self.head_mapping, self.scale, self.block_table, self.seq_lens,
                self.shape.block_size, self.max_len, None,
            )  # fmt: skip
        return self.out


class IpexPrefill(IpexCall):
    """IPEX's paged prefill (``flash_attn_varlen_func``, causal): each
    sequence's queries are the last of its tokens, as in ours."""

    def __init__(self, work: Workload) -> None:
        super().__init__(work)
        torch = self._torch
        s = work.shape
        queries = torch.full((s.batch,), s.queries, dtype=torch.int32)
        zero = torch.zeros(1, dtype=torch.int32)
        self.cu_seqlens_q = torch.cat([zero, queries.cumsum(0, dtype=torch.int32)])
        self.cu_seqlens_kv = torch.cat(
            [zero, self.seq_lens.cumsum(0, dtype=torch.int32)]
        )

    def __call__(self) -> Any:
        with self._torch.inference_mode():
            self._ops.flash_attn_varlen_func(
                self.out, self.query, self.key_cache, self.value_cache,
                self.cu_seqlens_q, self.cu_seqlens_kv, self.shape.queries,
                self.max_len, self.scale, True, self.block_table, None,
            )  # fmt: skip
        return self.out


def largest_difference(call: Callable[[], Any], ipex: IpexCall) -> float:
    """The largest difference between our output and IPEX's, relative to
    our output's largest magnitude."""
    our_out = np.asarray(call(), np.float32)
    ipex()
    scale = float(np.abs(our_out).max()) or 1.0
    return float(np.abs(ipex.result() - our_out).max()) / scale


def against_ipex(
    work: Workload, ipex: IpexCall, repeats: int
) -> tuple[Timing, dict[str, Any]]:
    """Ours and `ipex` alternated on `work`: our timing, and the columns
    that compare the two (times, IPEX's time / ours, the outputs' largest
    difference)."""
    call = ours(work)
    mine, theirs = measure_alternated([call, ipex], repeats)
    diff = largest_difference(call, ipex)
    return mine, {
        "ms": mine, "IPEX ms": theirs,
        "vs IPEX": f"{theirs.median / mine.median:.2f}x", "max diff": f"{diff:.1e}",
    }  # fmt: skip


def sum_over_pool(work: Workload) -> Timing:
    """The fastest of `read_probes` over the pool's own bytes."""
    flat = work.layer_pool.reshape(-1).view(np.float32)
    timings = [measure(fn, repeats=7, warmup=1) for fn in read_probes(flat).values()]
    return min(timings, key=lambda timing: timing.median)


def decode_rows(shapes: list[Shape], repeats: int) -> Table:
    rng = np.random.default_rng(0)
    table = Table(
        "decode (Tq = 1, D = 128) vs IPEX 2.8",
        ["batch", "context", "Hq/H", "block", "dtype", "ms", "IPEX ms", "vs IPEX",
         "sum ms", "of sum speed", "paged ms", "of paged speed", "max diff"],
    )  # fmt: skip
    for index, shape in enumerate(shapes):
        progress(f"  decode {index + 1}/{len(shapes)}")
        work = make_workload(shape, rng)
        mine, compared = against_ipex(work, IpexDecode(work), repeats)
        plain_sum = sum_over_pool(work)
        blocks_per_seq = -(-work.seq_lens // shape.block_size)
        _, paged = paged_read(work.layer_pool, work.block_table, blocks_per_seq)
        table.add(
            batch=shape.batch, context=shape.context, **{"Hq/H": shape.label},
            block=shape.block_size, dtype=shape.kind.name, **compared,
            **{"sum ms": plain_sum,
               "of sum speed": f"{plain_sum.median / mine.median:.2f}",
               "paged ms": paged,
               "of paged speed": f"{paged.median / mine.median:.2f}"},
            working_set_bytes=work.kv_bytes,
        )  # fmt: skip
        del work
    return table


def prefill_rows(shapes: list[Shape], repeats: int) -> Table:
    rng = np.random.default_rng(1)
    table = Table(
        f"prefill ({PREFILL_TOKENS} tokens, causal, D = 128) vs IPEX 2.8",
        ["batch", "tokens", "Hq/H", "block", "dtype", "ms", "IPEX ms", "vs IPEX",
         "max diff"],
    )  # fmt: skip
    for index, shape in enumerate(shapes):
        progress(f"  prefill {index + 1}/{len(shapes)}")
        work = make_workload(shape, rng)
        _, compared = against_ipex(work, IpexPrefill(work), repeats)
        table.add(
            batch=shape.batch, tokens=shape.context, **{"Hq/H": shape.label},
            block=shape.block_size, dtype=shape.kind.name, **compared,
        )  # fmt: skip
        del work
    return table


def run(args: Any) -> list[Table]:
    import torch

    torch.set_num_threads(numba.get_num_threads())
    batches = [(8, 2048)] if args.quick else [(8, 2048), (8, 8192)]
    shapes = [
        Shape(b, n, hq, h, bs, element_type(kind))
        for b, n in batches
        for hq, h in ((16, 16), (32, 8))
        for bs in (16, 64)
        for kind in ("f32", "f16", "bf16")
    ]
    import intel_extension_for_pytorch as ipex  # pyright: ignore[reportMissingImports]

    # IPEX picks its kernels by the instruction set torch finds (a VM may
    # hide AVX-512 from both), so the table says which one ran.
    print(
        f"threads: {numba.get_num_threads()}; torch {torch.__version__}, "
        f"IPEX {ipex.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; llmir's AMX tiles "
        f"{'on' if amx.enabled() else 'off'}; medians of alternated runs "
        "(decode 9, prefill 5) ±IQR/2"
    )
    tables: list[Table] = []
    if args.only != "prefill":
        table = decode_rows(shapes, repeats=9)
        table.print()
        tables.append(table)
    if args.only == "decode":
        return tables
    prefill_shapes = [
        Shape(1, PREFILL_TOKENS, hq, h, bs, element_type(kind), queries=PREFILL_TOKENS)
        for hq, h in ((16, 16), (32, 8))
        for bs in ((16,) if args.quick else (16, 64))
        for kind in ("f32", "f16", "bf16")
    ]
    prefill = prefill_rows(prefill_shapes, repeats=5)
    prefill.print()
    return [*tables, prefill]


def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--only", choices=("decode", "prefill"), help="run one of the two tables"
    )


def main() -> None:
    if not ipex_available():
        interpreter = IPEX_VENV / "bin" / "python"
        if interpreter.exists() and Path(sys.executable) != interpreter:
            # Same arguments, in the virtualenv that has IPEX.
            os.execv(
                interpreter,
                [str(interpreter), "-m", "benchmarks.bench_ipex", *sys.argv[1:]],
            )
        print(HINT)
        return
    benchmark_main((__doc__ or "").split("\n\n")[0], run, add_arguments)


if __name__ == "__main__":
    main()
