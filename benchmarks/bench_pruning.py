"""Token pruning policies at one block budget: how far attention moves from
full attention, and what heavy-hitter bookkeeping costs.

    python -m benchmarks.bench_pruning [--quick] [--json PATH]

Quality.  A randomly initialised Llama-style model (numpy,
`llmir.testing.tiny_llama`: hidden 512, 4 layers, GQA 8/2, head_dim 64,
RoPE) reads 2048 random tokens; every layer's queries, keys and values are
recorded.  Per layer, a cache under each policy holds a 256-token prompt,
then decodes the remaining tokens one by one (append, then attention of that
token's query), never holding more than N blocks of 16 tokens (N = 16 and
64):

* window: the last (N - 1) * 16 tokens (sliding_window = window_tokens);
* sinks + window: 4 sinks and the last (N - 2) * 16 tokens;
* heavy hitters: 4 sinks, the last N / 2 * 16 tokens and the blocks
  attention weighed most, within N blocks, by their mass per query that
  could see them ("mean") or their accumulated mass ("sum", H2O's score).

Each step's output is compared with full causal attention over every token
(relative L2 error over the heads), averaged over steps and layers.  Random
weights at Hugging Face's initialisation (std 0.02) give flat attention;
std 0.08 gives logits about 16 times larger.

Cost.  Decode attention (batch 8, context 4096, GQA 32/8, D = 128, block
16) with and without the per-block mass output, in one run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import Table, Timing, benchmark_main, measure, progress
from llmir.runtime import PagedKVCache
from llmir.runtime.cpu.attention_kernels import run_paged_attention
from llmir.runtime.dtypes import element_type
from llmir.testing.tiny_llama import (
    LayerRecord,
    TinyLlamaConfig,
    record_attention_inputs,
)

BLOCK, PROMPT = 16, 256
BUDGETS = (16, 64)


def policies(budget: int) -> dict[str, dict[str, Any]]:
    """The three policies, each holding at most `budget` blocks."""
    return {
        "window": {"window_tokens": (budget - 1) * BLOCK},
        "sinks + window": {"window_tokens": (budget - 2) * BLOCK, "sink_tokens": 4},
        "heavy hitters (mean)": {
            "window_tokens": budget // 2 * BLOCK,
            "sink_tokens": 4,
            "heavy_hitter_blocks": budget,
        },
        "heavy hitters (sum, H2O)": {
            "window_tokens": budget // 2 * BLOCK,
            "sink_tokens": 4,
            "heavy_hitter_blocks": budget,
            "heavy_hitter_score": "sum",
        },
    }


def policy_error(
    record: LayerRecord, policy: dict[str, Any], budget: int
) -> tuple[float, int]:
    """Mean relative error of decode attention under `policy` against full
    attention, and the most blocks the sequence held."""
    tokens, _, dim = record.queries.shape
    kv_heads = record.keys.shape[1]
    cache = PagedKVCache(1, kv_heads, dim, BLOCK, tokens, num_blocks=budget, **policy)
    full = PagedKVCache(1, kv_heads, dim, BLOCK, tokens, num_blocks=-(-tokens // BLOCK))
    mask: dict[str, Any] = {}
    if "heavy_hitter_blocks" not in policy:
        mask = {
            "sliding_window": policy["window_tokens"],
            "sink_tokens": policy.get("sink_tokens"),
        }
    q, k, v = record.queries, record.keys, record.values
    for c in (cache, full):
        c.append_kv(k[None, :PROMPT], v[None, :PROMPT], [0])
    # The prompt's own attention (prefill) weighs its blocks.
    cache.paged_attention(q[None, :PROMPT], *cache.block_table([0]), **mask)
    errors: list[float] = []
    peak = 0
    for t in range(PROMPT, tokens):
        for c in (cache, full):
            c.append_kv(k[None, t : t + 1], v[None, t : t + 1], [0])
        query = q[None, t : t + 1]
        got = cache.paged_attention(query, *cache.block_table([0]), **mask)
        want = full.paged_attention(query, *full.block_table([0]))
        errors.append(float(np.linalg.norm(got - want) / np.linalg.norm(want)))
        peak = max(peak, cache.stats().blocks_used)
    return float(np.mean(errors)), peak


def quality_rows(table: Table, tokens: int, layers: int) -> None:
    for std in (0.02, 0.08):
        config = TinyLlamaConfig(layers=layers, init_std=std)
        sequence = np.random.default_rng(1).integers(0, config.vocab, tokens)
        progress(f"recording a random Llama (std {std}) over {tokens} tokens ...")
        records = record_attention_inputs(config, sequence)
        for budget in BUDGETS:
            for name, policy in policies(budget).items():
                progress(f"  {budget} blocks, {name} ...")
                results = [policy_error(r, policy, budget) for r in records]
                table.add(
                    **{
                        "init std": std,
                        "budget (blocks)": budget,
                        "policy": name,
                        "peak held": max(p for _, p in results),
                        "rel. error": float(np.mean([e for e, _ in results])),
                        "worst layer": float(max(e for e, _ in results)),
                    }
                )


def _decode_timings(dtype: str, context: int) -> tuple[Timing, Timing]:
    """Decode attention without and with the block-mass output."""
    batch, kv_heads, q_heads, dim = 8, 8, 32, 128
    rng = np.random.default_rng(0)
    kind = element_type(dtype)
    blocks = batch * context // BLOCK
    pool = kind.encode(
        rng.standard_normal((blocks, kv_heads, 2, BLOCK, dim)).astype(np.float32)
    )
    table = rng.permutation(blocks).astype(np.int32).reshape(batch, -1)
    lens = np.full(batch, context, np.int32)
    query = rng.standard_normal((batch, 1, q_heads, dim)).astype(np.float32)
    out = np.empty(query.shape, np.float32)
    mass = np.zeros((batch, kv_heads, table.shape[1]), np.float32)

    def attend(block_mass: Any) -> None:
        run_paged_attention(
            query, pool, kind.code, table, lens, out, scale=dim**-0.5,
            block_mass=block_mass,
        )  # fmt: skip

    off = measure(lambda: attend(None), repeats=9, warmup=2)
    on = measure(lambda: attend(mass), repeats=9, warmup=2)
    return off, on


def cost_rows(table: Table, context: int) -> None:
    for dtype in ("f32", "bf16"):
        off, on = _decode_timings(dtype, context)
        for label, timing in (("off (default)", off), ("on", on)):
            table.add(
                **{
                    "dtype": dtype,
                    "block mass": label,
                    "ms": timing,
                    "on / off": timing.median / off.median,
                }
            )


def run(args: Any) -> list[Table]:
    quick = bool(args.quick)
    quality = Table(
        f"Pruning policies at {' and '.join(map(str, BUDGETS))} blocks of {BLOCK}: "
        "decode attention vs full "
        "attention (random Llama, hidden 512, GQA 8/2, D=64)",
        [
            "init std",
            "budget (blocks)",
            "policy",
            "peak held",
            "rel. error",
            "worst layer",
        ],
    )
    quality_rows(quality, 640 if quick else 2048, 1 if quick else 4)
    quality.print()
    cost = Table(
        "Heavy-hitter bookkeeping: decode attention with the block-mass output "
        "(batch 8, context 4096, GQA 32/8, D=128, block 16)",
        ["dtype", "block mass", "ms", "on / off"],
    )
    cost_rows(cost, 512 if quick else 4096)
    cost.print()
    return [quality, cost]


def main() -> None:
    benchmark_main((__doc__ or "").splitlines()[0], run)


if __name__ == "__main__":
    main()
