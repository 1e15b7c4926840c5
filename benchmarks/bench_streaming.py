"""Generating far past the pool: sink + window pruning (StreamingLLM) against
a cache that keeps every token.

    python -m benchmarks.bench_streaming [--quick] [--json PATH] [--plot-blocks PATH]

One sequence generates 65,536 tokens (1 layer, GQA 4/2, D = 64, f32,
block 16) with S = 4 sinks and a window of W = 4096.  Each step appends the
token's K/V and runs attention with the mask ``t < S or t > pos - W``; the
next token's query, keys and values come from that output (plus noise), so
any difference would feed forward.  The pruned cache's pool is the bound,
``ceil(S/B) + ceil(W/B) + 1`` blocks; the unpruned cache gets room for all.
Every 256th step both run the same attention and must agree bit for bit;
every 8192nd the output is also checked against the float64 reference.
`--plot-blocks` draws blocks held against tokens generated (matplotlib).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import Table, Timing, benchmark_main, progress
from llmir.runtime import PagedKVCache
from llmir.testing.reference import reference_paged_attention

Q_HEADS, HEADS, HEAD_DIM, BLOCK, SINKS = 4, 2, 64, 16, 4


def generate(
    tokens: int, window: int, every: int, reference_every: int
) -> dict[str, Any]:
    bound = -(-SINKS // BLOCK) + -(-window // BLOCK) + 1
    pruned = PagedKVCache(
        1,
        HEADS,
        HEAD_DIM,
        BLOCK,
        tokens,
        num_blocks=bound,
        window_tokens=window,
        sink_tokens=SINKS,
    )
    plain = PagedKVCache(
        1, HEADS, HEAD_DIM, BLOCK, tokens, num_blocks=-(-tokens // BLOCK)
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, Q_HEADS, HEAD_DIM)).astype(np.float32)
    held_pruned: list[int] = []
    held_plain: list[int] = []
    checked = references = 0
    worst = 0.0
    step_times: list[float] = []
    for step in range(tokens):
        keys, values = x[:, :, :HEADS], x[:, :, HEADS:]
        start = time.perf_counter()
        pruned.append_kv(keys, values, [0])
        table, lens = pruned.block_table([0])
        out = pruned.paged_attention(
            x, table, lens, sliding_window=window, sink_tokens=SINKS
        )
        step_times.append(time.perf_counter() - start)
        plain.append_kv(keys, values, [0])
        if step % every == every - 1 or step == tokens - 1:
            plain_table, plain_lens = plain.block_table([0])
            want = plain.paged_attention(
                x, plain_table, plain_lens, sliding_window=window, sink_tokens=SINKS
            )
            if not np.array_equal(out, want):
                raise AssertionError(
                    f"step {step}: pruned and unpruned attention differ"
                )
            checked += 1
            if step % reference_every == reference_every - 1 or step == tokens - 1:
                exact = reference_paged_attention(
                    x, plain.kv_pool[0], plain.element_type, plain_table, plain_lens,
                    sliding_window=window, sink_tokens=SINKS,
                )  # fmt: skip
                error = float(np.abs(out - exact).max() / np.abs(exact).max())
                worst = max(worst, error)
                references += 1
            pruned.check_invariants()
        held_pruned.append(pruned.stats().blocks_used)
        held_plain.append(plain.stats().blocks_used)
        noise = rng.standard_normal(x.shape).astype(np.float32)
        x = (out + noise) * np.float32(0.7)
        if step % 8192 == 8191:
            progress(f"  {step + 1} tokens, {held_pruned[-1]} blocks held")
    return {
        "bound": bound,
        "pool": pruned.num_blocks,
        "held_pruned": held_pruned,
        "held_plain": held_plain,
        "checked": checked,
        "references": references,
        "worst": worst,
        "step": Timing(tuple(step_times[window:])),  # after the window fills
        "stats": pruned.stats(),
        "block_bytes": pruned.geometry.bytes_per_block,
    }


def plot_blocks(result: dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "--plot-blocks needs matplotlib: pip install -e '.[plot]'"
        ) from None
    tokens = np.arange(1, len(result["held_pruned"]) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(tokens, result["held_plain"], label="unpruned")
    ax.plot(
        tokens, result["held_pruned"], label=f"pruned (S={SINKS}, W={result['window']})"
    )
    ax.axhline(
        result["pool"],
        color="grey",
        linestyle="--",
        label=f"pool: {result['pool']} blocks",
    )
    ax.set_xlabel("tokens generated")
    ax.set_ylabel(f"blocks held (block size {BLOCK})")
    ax.set_title("One sequence: blocks held, sink + window pruning vs none")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def run(args: Any) -> list[Table]:
    tokens, window = (8192, 512) if args.quick else (65536, 4096)
    progress(f"generating {tokens} tokens twice (pruned and unpruned) ...")
    result = generate(tokens, window, every=256, reference_every=8192)
    result["window"] = window
    stats = result["stats"]
    table = Table(
        f"Sinks + window pruning: one sequence of {tokens} tokens (S={SINKS}, "
        f"W={window}, block {BLOCK}, GQA {Q_HEADS}/{HEADS}, D={HEAD_DIM}, f32)",
        ["cache", "pool blocks", "peak blocks held", "MiB held", "blocks given back"],
    )
    mib = result["block_bytes"] / (1 << 20)
    for name, held, pool, pruned_blocks in (
        ("pruned", result["held_pruned"], result["pool"], stats.blocks_pruned),
        ("unpruned", result["held_plain"], -(-tokens // BLOCK), 0),
    ):
        table.add(
            **{
                "cache": name,
                "pool blocks": pool,
                "peak blocks held": max(held),
                "MiB held": max(held) * mib,
                "blocks given back": pruned_blocks,
            }
        )
    held = result["held_pruned"]
    table.notes.append(
        f"bound ceil(S/B)+ceil(W/B)+1 = {result['bound']} blocks; "
        f"flat from token {held.index(max(held)) + 1} on"
    )
    table.notes.append(
        f"{result['checked']} checked steps bit-identical to the unpruned cache; "
        f"{result['references']} against float64, worst relative error "
        f"{result['worst']:.2e}"
    )
    table.notes.append(
        f"decode step (append + attention) after the window filled: "
        f"{1e3 * result['step'].median:.3f} ms median"
    )
    table.print()
    if args.plot_blocks:
        plot_blocks(result, args.plot_blocks)
    return [table]


def main() -> None:
    benchmark_main(
        (__doc__ or "").splitlines()[0],
        run,
        lambda parser: parser.add_argument(
            "--plot-blocks", metavar="PATH", help="plot blocks held vs tokens (PNG)"
        ),
    )


if __name__ == "__main__":
    main()
