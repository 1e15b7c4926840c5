"""Interpreter overhead per `llm` op, against calling the runtime from Python.

    python -m benchmarks.bench_interpreter

One decode loop (append_kv, block_table, paged_attention per step, batch 4,
f16 cache, 8 heads x 64, short contexts so the kernels themselves are cheap)
is run three ways: the `llm` ops interpreted directly, the same module after
`convert-llm-to-func`, and a plain Python loop making the same runtime calls.
The difference per op is what the interpreter adds (walking the IR, the
scf.for, bridging ShapedArray <-> numpy, checks).  Median of several runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from xdsl.dialects.builtin import f32

from benchmarks.common import Table, Timing, benchmark_main, measure
from llmir import PagedKVCache, paged_attention
from llmir.interpreters.arrays import from_numpy
from llmir.interpreters.runner import apply_passes, make_interpreter, parse_module

BATCH, HEADS, DIM, BLOCK, MAX_LEN = 4, 8, 64, 16, 512
OPS_PER_STEP = 3

PROGRAM = f"""
!cache = !llm.paged_kv_cache<f16, 1, {HEADS}, {DIM}, {BLOCK}, {MAX_LEN}>
!x = tensor<{BATCH}x1x{HEADS}x{DIM}xf32>
!ids = tensor<{BATCH}xi32>
func.func @main(%x : !x) -> !x {{
  %ids = arith.constant dense<[0, 1, 2, 3]> : !ids
  %c = llm.create_kv_cache {{num_blocks = 256 : i64}} : !cache
  %lb = arith.constant 0 : index
  %ub = arith.constant STEPS : index
  %one = arith.constant 1 : index
  %y, %cache = scf.for %i = %lb to %ub step %one
      iter_args(%xi = %x, %ci = %c) -> (!x, !cache) {{
    %ca, %ba = llm.append_kv %ci, %xi, %xi, %ids
        : (!cache, !x, !x, !ids) -> (!cache, tensor<{BATCH}x1xi32>)
    %t, %l = llm.block_table %ca, %ids
        : (!cache, !ids) -> (tensor<{BATCH}x32xi32>, !ids)
    %o = llm.paged_attention %xi, %ca, %t, %l
        : (!x, !cache, tensor<{BATCH}x32xi32>, !ids) -> !x
    scf.yield %o, %ca : !x, !cache
  }}
  func.return %y : !x
}}
"""


def _interpreted(steps: int, lowered: bool, repeats: int) -> Timing:
    module = parse_module(PROGRAM.replace("STEPS", str(steps)))
    if lowered:
        apply_passes(module, "convert-llm-to-func")
    x = np.random.default_rng(0).standard_normal((BATCH, 1, HEADS, DIM))
    x = x.astype(np.float32)

    def run() -> None:
        interpreter, _ = make_interpreter(module)
        interpreter.call_op("main", (from_numpy(x, f32),))

    return measure(run, repeats=repeats)


def _direct(steps: int, repeats: int) -> Timing:
    x0 = np.random.default_rng(0).standard_normal((BATCH, 1, HEADS, DIM))
    x0 = x0.astype(np.float32)
    ids = np.arange(BATCH, dtype=np.int32)

    def run() -> None:
        cache = PagedKVCache(1, HEADS, DIM, BLOCK, MAX_LEN, "f16", num_blocks=256)
        x = x0
        for _ in range(steps):
            cache.append_kv(x, x, ids)
            table, lens = cache.block_table(ids)
            x = paged_attention(x, cache, table, lens)

    return measure(run, repeats=repeats)


def run(args: Any) -> list[Table]:
    steps = 20 if args.quick else args.steps
    repeats = 7 if args.quick else 9
    ops = steps * OPS_PER_STEP
    table = Table(
        f"decode loop: {steps} steps x {OPS_PER_STEP} llm ops, batch {BATCH}, "
        f"f16 {HEADS}x{DIM}, block {BLOCK}; medians of {repeats} ±IQR/2",
        ["path", "total ms", "us/op", "overhead us/op"],
    )
    direct = _direct(steps, repeats)
    table.add(path="python -> runtime", **{"total ms": direct,
              "us/op": direct.median / ops * 1e6})  # fmt: skip
    for name, lowered in (("llm ops interpreted", False), ("lowered calls", True)):
        timing = _interpreted(steps, lowered, repeats)
        table.add(
            path=name,
            **{
                "total ms": timing,
                "us/op": timing.median / ops * 1e6,
                "overhead us/op": (timing.median - direct.median) / ops * 1e6,
            },
        )
    table.print()
    return [table]


def main() -> None:
    benchmark_main(
        (__doc__ or "").splitlines()[0],
        run,
        lambda parser: parser.add_argument("--steps", type=int, default=200),
    )


if __name__ == "__main__":
    main()
