"""Passes benchmark: what `llm-reserve-slots-per-step` and
`llm-plan-kv-memory` buy, measured.

    python -m benchmarks.bench_passes [--quick] [--json PATH]

* A 32-layer decode step at batch 256 (f16, H=8, D=128, block 16) three
  ways: all layers in one `append_kv_all_layers` call (what a model cannot
  do: layer l+1's keys need layer l's output), 32 `append_kv` calls (what
  it does without the pass), and one `reserve_slots` plus 32 `write_kv`
  (what the pass produces).  Each row gives the whole step and its
  bookkeeping alone (the host-side plan and commit: rows, lengths,
  allocation, slot mapping).
* A 32-layer variant of `examples/decode.mlir` (generated: every layer
  appends, reads its table, attends), interpreted before and after the
  pass, directly and lowered: outputs bit-identical, times side by side.
* `llm-plan-kv-memory{budget=...}` on a Llama-like cache: the blocks, tokens
  and bytes of the plan against what the runtime allocates for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from xdsl.dialects.builtin import f32

from benchmarks.common import Table, Timing, benchmark_main, measure, progress
from llmir.interpreters.arrays import from_numpy
from llmir.interpreters.runner import (
    apply_passes,
    entry_function,
    execute,
    parse_module,
    python_value,
)
from llmir.runtime import PagedKVCache
from llmir.runtime.memory import format_bytes, parse_bytes, plan_blocks

HEADS, HEAD_DIM, BLOCK = 8, 128, 16
REPEATS = 9


def _minus(total: Timing, base: Timing, steps: int) -> Timing:
    return Timing(tuple((t - base.median) / steps for t in total.samples))


def decode_step(table: Table, layers: int, batch: int, steps: int) -> None:
    max_len = 1 + steps
    cache = PagedKVCache(
        layers,
        HEADS,
        HEAD_DIM,
        BLOCK,
        max_len,
        "f16",
        num_blocks=batch * -(-max_len // BLOCK),
    )
    ids = np.arange(batch)
    rng = np.random.default_rng(0)
    first = rng.standard_normal((layers, batch, 1, HEADS, HEAD_DIM), np.float32)
    tok = first + 1
    seqs = cache.sequences

    def setup() -> None:
        cache.reset()
        cache.append_kv_all_layers(first, first, ids)

    def run(form: str) -> None:
        setup()
        for _ in range(steps):
            if form == "all":
                cache.append_kv_all_layers(tok, tok, ids)
            elif form == "append":
                for layer in range(layers):
                    cache.append_kv(tok[layer], tok[layer], ids, layer=layer)
            else:
                slots, _, _ = cache.reserve_slots(ids, 1)
                for layer in range(layers):
                    cache.write_kv(tok[layer], tok[layer], slots, layer)

    def books_setup() -> None:
        cache.reset()
        seqs.commit_append(seqs.plan_append(ids, 1, None))

    def books(form: str) -> None:
        books_setup()
        for _ in range(steps):
            if form == "all":
                seqs.commit_append(seqs.plan_append(ids, 1, None))
            elif form == "append":
                for layer in range(layers):
                    seqs.commit_append(seqs.plan_append(ids, 1, layer))
            else:
                seqs.commit_reserve(seqs.plan_reserve(ids, 1))

    base = measure(setup, repeats=REPEATS)
    books_base = measure(books_setup, repeats=REPEATS)
    for form, label in (
        ("all", f"{layers} layers in one call (not possible in a model)"),
        ("append", f"{layers} x append_kv (before the pass)"),
        ("reserve", f"reserve_slots + {layers} x write_kv (after the pass)"),
    ):
        step = _minus(measure(lambda f=form: run(f), repeats=REPEATS), base, steps)
        book = _minus(
            measure(lambda f=form: books(f), repeats=REPEATS), books_base, steps
        )
        table.add(
            step=f"b={batch}: {label}",
            us=step,
            **{
                "bookkeeping us": book,
                "bookkeeping us/seq": book.median * 1e6 / batch,
            },
        )


def decode_program(layers: int, batch: int, steps: int) -> str:
    """A decode loop of `steps` steps through `layers` layers of paged
    attention alone (no weights), f16 cache of 2 heads x 16."""
    cache = f"!llm.paged_kv_cache<f16, {layers}, 2, 16, 16, 256>"
    x = f"tensor<{batch}x1x2x16xf32>"
    ids = f"tensor<{batch}xi32>"
    table = f"tensor<{batch}x16xi32>"
    body = []
    h, c = "%xi", "%ci"
    for layer in range(layers):
        body.append(
            f"    %c{layer}, %b{layer} = llm.append_kv {c}, {h}, {h}, %ids "
            f"{{layer = {layer} : i32}} : (!cache, {x}, {x}, {ids}) "
            f"-> (!cache, tensor<{batch}x1xi32>)"
        )
        body.append(
            f"    %t{layer}, %l{layer} = llm.block_table %c{layer}, %ids "
            f": (!cache, {ids}) -> ({table}, {ids})"
        )
        body.append(
            f"    %h{layer} = llm.paged_attention {h}, %c{layer}, %t{layer}, "
            f"%l{layer} {{layer = {layer} : i32}} : ({x}, !cache, {table}, {ids}) "
            f"-> {x}"
        )
        h, c = f"%h{layer}", f"%c{layer}"
    lines = "\n".join(body)
    id_list = ", ".join(str(i) for i in range(batch))
    return f"""
!cache = {cache}
func.func @main(%x0 : {x}) -> {x} {{
  %empty = llm.create_kv_cache {{num_blocks = {batch * 16} : i64}} : !cache
  %ids = arith.constant dense<[{id_list}]> : {ids}
  %lb = arith.constant 0 : index
  %ub = arith.constant {steps} : index
  %one = arith.constant 1 : index
  %x, %cache = scf.for %i = %lb to %ub step %one
      iter_args(%xi = %x0, %ci = %empty) -> ({x}, !cache) {{
{lines}
    scf.yield {h}, {c} : {x}, !cache
  }}
  func.return %x : {x}
}}
"""


def interpreted(table: Table, layers: int, batch: int, steps: int) -> None:
    """The program parsed and transformed once per form, then executed
    repeatedly (the call alone is timed)."""
    program = decode_program(layers, batch, steps)
    x0 = np.random.default_rng(1).standard_normal((batch, 1, 2, 16), np.float32)
    forms = {
        "llm ops": "",
        "llm ops, reserved steps": "llm-reserve-slots-per-step",
        "lowered": "convert-llm-to-func",
        "lowered, reserved steps": "llm-reserve-slots-per-step,convert-llm-to-func",
    }
    outputs: dict[str, Any] = {}
    timings: dict[str, Timing] = {}
    for name, passes in forms.items():
        module = parse_module(program)
        if passes:
            apply_passes(module, passes)
        entry = entry_function(module, "main")
        assert entry is not None
        arg = from_numpy(x0, f32)
        execute(module, entry, [arg])  # compile kernels, warm up
        samples: list[float] = []
        for _ in range(REPEATS):
            done = execute(module, entry, [arg])
            samples.append(done.seconds)
            outputs[name] = python_value(done.results[0])
        timings[name] = Timing(tuple(samples))
    reference = outputs["llm ops"]
    for name, timing in timings.items():
        base = timings["lowered" if name.startswith("lowered") else "llm ops"]
        table.add(
            program=f"{layers} layers x {steps} steps, batch {batch}: {name}",
            ms=timing,
            speedup=f"{base.median / timing.median:.2f}x",
            outputs="bit-identical"
            if np.array_equal(outputs[name], reference)
            else "DIFFER",
        )


def memory_plan(table: Table, budget: str) -> None:
    source = (
        "func.func @main() {\n  %kv = llm.create_kv_cache {num_blocks = 1 : i64}"
        " : !llm.paged_kv_cache<f16, 32, 8, 128, 16, 4096>\n  func.return\n}\n"
    )
    module = parse_module(source)
    apply_passes(module, f'llm-plan-kv-memory{{budget="{budget}"}}')
    create = next(op for op in module.walk() if op.name == "llm.create_kv_cache")
    blocks = int(create.num_blocks)  # pyright: ignore[reportAttributeAccessIssue]
    geometry = create.cache.type.geometry  # pyright: ignore[reportAttributeAccessIssue]
    plan = plan_blocks(geometry, blocks)
    runtime = PagedKVCache.from_geometry(
        geometry, memory_budget_bytes=parse_bytes(budget)
    )
    table.add(
        cache="f16, 32 layers, 8 kv heads, head_dim 128, block 16, max 4096",
        budget=budget,
        blocks=f"{blocks} (runtime: {runtime.num_blocks})",
        tokens=plan.tokens,
        sequences=plan.max_len_sequences,
        bytes=f"{format_bytes(plan.total_bytes)} (runtime pool "
        f"{'equal' if runtime.stats().pool_bytes == plan.pool_bytes else 'DIFFERS'})",
    )


def run(args: Any) -> list[Table]:
    quick = bool(args.quick)
    layers = 4 if quick else 32
    step = Table(
        f"{layers}-layer decode step, f16, H=8, D=128, block 16 (per step; "
        "bookkeeping: host-side plan + commit alone)",
        ["step", "us", "bookkeeping us", "bookkeeping us/seq"],
    )
    progress("decode step forms ...")
    decode_step(step, layers, 16 if quick else 256, 4 if quick else 16)
    program = Table(
        "Interpreted decode program before and after llm-reserve-slots-per-step",
        ["program", "ms", "speedup", "outputs"],
    )
    progress("interpreted program ...")
    interpreted(program, 4 if quick else 32, 4, 2 if quick else 8)
    plan = Table(
        "llm-plan-kv-memory against the runtime",
        ["cache", "budget", "blocks", "tokens", "sequences", "bytes"],
    )
    for budget in ("1GiB",) if quick else ("2.5GB", "8GiB"):
        memory_plan(plan, budget)
    for t in (step, program, plan):
        t.print()
    return [step, program, plan]


def main() -> None:
    benchmark_main((__doc__ or "").splitlines()[0], run)


if __name__ == "__main__":
    main()
