"""End-to-end generation: llmir as the KV cache and attention of a
transformers model, against transformers' own generation, same process, same
model and prompts.

    python -m benchmarks.bench_generate [--quick] [--json PATH]

The model is issue 15's medium random Llama (hidden 1024, 8 layers, 16/4
heads, head_dim 64, intermediate 2816, vocab 32000; f32 weights: this CPU
has no bf16 matrix unit worth using); 16 requests with prompts spread evenly
over 128-2048 tokens and 128 new tokens each, greedy, end-of-sequence off so
every run makes the same 2048 tokens.  Rows:

* llmir: `Engine` (continuous batching, no padding, f32 and f16 caches);
* transformers ``generate``: the padded batch with its default cache and
  SDPA attention (what a user of transformers gets by default);
* transformers ``generate_batch``: its own continuous batching over its
  paged cache, when it runs on this CPU.

Throughput is new tokens per second of wall time.  For llmir the time is
split by component (model forward in torch, llmir's append and attention,
the engine's Python around the forwards).  KV memory: llmir's peak pool bytes
against the tokens held rounded up to whole blocks, and transformers' padded
cache at the end of its run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.common import Table, benchmark_main, progress


@dataclass
class _Clock:
    append_s: float = 0.0
    attention_s: float = 0.0


def _timed_step(clock: _Clock) -> Any:
    """`direct_step`, timing its append and its attention apart."""
    from llmir.integrations.transformers.steps import (
        AttentionOptions,
        append_step,
        attend_step,
    )

    def step(
        cache: Any,
        layer: int,
        query: Any,
        keys: Any,
        values: Any,
        seq_ids: Any,
        token_ids: Any,
        options: AttentionOptions,
    ) -> Any:
        began = time.perf_counter()
        table, lens = append_step(cache, layer, keys, values, seq_ids, token_ids)
        middle = time.perf_counter()
        out = attend_step(cache, layer, query, table, lens, options)
        clock.append_s += middle - began
        clock.attention_s += time.perf_counter() - middle
        return out

    return step


def _llmir_row(
    table: Table, model: Any, prompts: list[list[int]], new: int, kv_dtype: str
) -> tuple[dict[int, list[int]], float]:
    from llmir.integrations.transformers.engine import Engine, Request

    clock = _Clock()
    block = 16
    blocks = sum(-(-(len(p) + new) // block) for p in prompts)
    engine = Engine(
        model,
        kv_dtype=kv_dtype,
        block_size=block,
        num_blocks=blocks,
        max_batch=len(prompts),
        max_prefill_tokens=2048,
        step=_timed_step(clock),
    )
    # Warm-up: compile the kernels (Numba caches them) outside the timing.
    engine.run([Request(0, prompts[0][:32], max_new_tokens=2)])
    engine.stats = type(engine.stats)()
    clock.append_s = clock.attention_s = 0.0
    requests = [Request(i, p, max_new_tokens=new) for i, p in enumerate(prompts)]
    began = time.perf_counter()
    done = engine.run(requests)
    wall = time.perf_counter() - began
    stats = engine.stats
    forward = stats.prefill_s + stats.decode_s
    ttft = [c.first_token_s for c in done.values()]
    table.add(
        run=f"llmir Engine, {kv_dtype} cache",
        wall_s=wall,
        tokens_per_s=len(prompts) * new / wall,
        ttft_mean_ms=1e3 * float(np.mean(ttft)),
        ttft_max_ms=1e3 * max(ttft),
        kv_peak_MiB=stats.peak_kv_bytes / 2**20,
        kv_note=(
            f"{stats.peak_kv_bytes / stats.peak_block_rounded_bytes:.4f}x the "
            "tokens held in whole blocks"
        ),
        profile=(
            f"torch {forward - clock.append_s - clock.attention_s:.1f} s, "
            f"llmir attention {clock.attention_s:.1f} s, append+table "
            f"{clock.append_s:.2f} s, engine/Python {wall - forward:.2f} s; "
            f"prefill {stats.prefill_s:.1f} s, decode {stats.decode_s:.1f} s"
        ),
    )
    return {i: done[i].tokens for i in done}, wall


def _hf_row(
    table: Table, model: Any, prompts: list[list[int]], new: int
) -> tuple[list[list[int]], float]:
    from llmir.integrations.transformers.compare import hf_generate

    run = hf_generate(
        model, prompts, new, attn_implementation="sdpa", stop_at_eos=False
    )
    table.add(
        run="transformers generate (padded batch, sdpa, its cache)",
        wall_s=run.seconds,
        tokens_per_s=len(prompts) * new / run.seconds,
        ttft_mean_ms=1e3 * run.first_token_s,
        ttft_max_ms=1e3 * run.first_token_s,
        kv_peak_MiB=run.kv_bytes / 2**20,
        kv_note="padded to the longest prompt",
    )
    return run.tokens, run.seconds


def _hf_batch_row(
    table: Table, model: Any, prompts: list[list[int]], new: int
) -> float | None:
    from transformers import GenerationConfig

    model.set_attn_implementation("sdpa")
    config = GenerationConfig(
        max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    began = time.perf_counter()
    try:
        # Not under inference_mode: its worker thread updates tensors in
        # place outside of it.
        outputs = model.generate_batch(  # pyright: ignore[reportCallIssue]
            inputs=prompts, generation_config=config, progress_bar=False
        )
    except Exception as e:  # its CPU support varies between versions
        table.add(run="transformers generate_batch", kv_note=f"failed: {e}"[:80])
        return None
    wall = time.perf_counter() - began
    made = sum(len(o.generated_tokens) for o in outputs.values())
    if made == 0:
        table.add(run="transformers generate_batch", kv_note="failed: no tokens")
        return None
    table.add(
        run="transformers generate_batch (continuous, its paged cache)",
        wall_s=wall,
        tokens_per_s=made / wall,
        kv_note=f"{made} tokens made",
    )
    return wall


def run(args: Any) -> list[Table]:
    # torch before Numba starts its threads (see benchmarks/__init__.py).
    import torch

    from llmir.integrations.transformers.models import random_model

    quick = bool(args.quick)
    name = "llama-tiny" if quick else "llama-medium"
    lens = (
        (np.linspace(16, 64, 4) if quick else np.linspace(128, 2048, 16))
        .round()
        .astype(int)
    )
    new = 8 if quick else 128
    progress(f"model {name}, prompts {lens.tolist()}, {new} new tokens each ...")
    model = random_model(name, seed=0, dtype=torch.float32)
    vocab = int(model.config.vocab_size)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, vocab, int(n)).tolist() for n in lens]
    table = Table(
        f"Generation, {name}, {len(prompts)} requests of {lens.min()}-{lens.max()} "
        f"prompt tokens + {new} new (f32 weights, greedy, "
        f"{torch.get_num_threads()} threads)",
        [
            "run",
            "wall_s",
            "tokens_per_s",
            "ttft_mean_ms",
            "ttft_max_ms",
            "kv_peak_MiB",
            "kv_note",
            "profile",
        ],
    )
    progress("llmir, f32 cache ...")
    ours, our_wall = _llmir_row(table, model, prompts, new, "f32")
    progress("llmir, f16 cache ...")
    _llmir_row(table, model, prompts, new, "f16")
    progress("transformers generate (padded) ...")
    theirs, hf_wall = _hf_row(table, model, prompts, new)
    progress("transformers generate_batch ...")
    batch_wall = _hf_batch_row(table, model, prompts, new)
    same = sum(ours[i] == theirs[i] for i in range(len(prompts)))
    table.notes.append(
        f"llmir (f32 cache) is {hf_wall / our_wall:.2f}x transformers generate"
        + (f" and {batch_wall / our_wall:.2f}x generate_batch" if batch_wall else "")
        + f"; greedy tokens identical for {same}/{len(prompts)} requests."
    )
    table.print()
    return [table]


def main() -> None:
    benchmark_main((__doc__ or "").splitlines()[0], run)


if __name__ == "__main__":
    main()
