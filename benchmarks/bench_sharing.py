"""Sharing benchmark: what prefix caching, forks and eviction save, and what
their bookkeeping costs.

    python -m benchmarks.bench_sharing [--quick] [--json PATH]

Four workloads report blocks and hit tokens against their targets (counts,
not times, so they are exact):

* shared system prompt: 64 requests of a 2048-token shared prompt plus
  64-256 tokens of their own;
* prefixes that end inside a block (2050, 2061, ... tokens shared): the hit
  tokens of llmir's partial-block reuse against vLLM's full-blocks-only rule
  on the same trace;
* parallel sampling: 8 children forked from a 4096-token prompt, 256 decode
  steps each, against the same samples stored unshared;
* a limited pool: a trace whose working set is 3x the pool, run with each
  eviction policy (hit rate, evictions; it must never run out of blocks).

Then the bookkeeping: prefix matching per block, fork of a 4096-token
sequence, and the decode step's per-sequence bookkeeping with sharing on
and off (medians and spreads of repeated runs).  Keys and values are zeros:
the block accounting and the bookkeeping do not depend on them (the tests
check the values).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import Table, Timing, benchmark_main, measure, progress
from llmir.runtime import PagedKVCache
from llmir.runtime.prefix_cache import PrefixCache

LAYERS, HEADS, HEAD_DIM, BLOCK = 2, 2, 16, 16
VOCAB = 32_000


def _cache(num_blocks: int, max_seq_len: int = 8192, **options: Any) -> PagedKVCache:
    return PagedKVCache(
        LAYERS, HEADS, HEAD_DIM, BLOCK, max_seq_len, num_blocks=num_blocks, **options
    )


def _append(cache: PagedKVCache, seq: int, tokens: list[int] | np.ndarray) -> None:
    """Append `tokens` (with their ids) to `seq`, all layers at once."""
    ids = np.asarray(tokens, np.int32)[None, :]
    kv = np.zeros((LAYERS, 1, ids.shape[1], HEADS, HEAD_DIM), np.float32)
    if ids.shape[1]:
        cache.append_kv_all_layers(kv, kv, [seq], token_ids=ids)


def _request(cache: PagedKVCache, seq: int, prompt: np.ndarray) -> int:
    """Serve a prompt: match its cached prefix, append the rest; returns the
    tokens reused."""
    hit = cache.match_prefix(seq, prompt)
    _append(cache, seq, prompt[hit:])
    return hit


def _verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


# ---------------------------------------------------------------------------
# Blocks and hits


def system_prompt(table: Table, requests: int, shared: int) -> None:
    rng = np.random.default_rng(0)
    system = rng.integers(0, VOCAB, shared)
    own = rng.integers(64, 257, requests)
    unique_blocks = int(sum(-(-int(n) // BLOCK) for n in own))
    unshared = int(sum(-(-(shared + int(n)) // BLOCK) for n in own))
    cache = _cache(unshared + 64, enable_prefix_caching=True)
    hits = 0
    for seq in range(requests):
        prompt = np.concatenate([system, rng.integers(0, VOCAB, own[seq])])
        hits += _request(cache, seq, prompt)
    stats = cache.stats()
    bound = shared // BLOCK + unique_blocks + requests
    table.add(
        workload=f"system prompt: {requests} x ({shared} + 64..256)",
        measure="blocks in use",
        llmir=stats.blocks_used,
        target=f"<= {bound}",
        reference=f"{unshared} unshared",
        verdict=_verdict(stats.blocks_used <= bound),
    )
    want = (requests - 1) * shared
    table.add(
        workload="",
        measure="prefix hit tokens",
        llmir=hits,
        target=f"= {want}",
        reference=f"hit rate {100 * stats.hit_rate:.1f}%",
        verdict=_verdict(hits == want),
    )


def unaligned_prefixes(table: Table, requests: int) -> None:
    """Request 0 stores a 3000-token document; request j shares its first
    2050 + 11 (j - 1) tokens, then goes its own way."""
    rng = np.random.default_rng(1)
    document = rng.integers(0, VOCAB, 3000)
    cache = _cache(4096, enable_prefix_caching=True)
    _append(cache, 0, document)
    ours = full_blocks = 0
    for j in range(1, requests + 1):
        shared = 2050 + 11 * (j - 1)
        tail = rng.integers(0, VOCAB, 64)
        tail[0] = (document[shared] + 1) % VOCAB  # diverge right there
        hit = _request(cache, j, np.concatenate([document[:shared], tail]))
        ours += hit
        full_blocks += shared // BLOCK * BLOCK  # vLLM: whole blocks only
    table.add(
        workload=f"unaligned prefixes: {requests} x (2050, 2061, ...)",
        measure="prefix hit tokens",
        llmir=ours,
        target=f"> {full_blocks}",
        reference=f"{full_blocks} full blocks only (vLLM)",
        verdict=_verdict(ours > full_blocks),
    )


def parallel_sampling(table: Table, prompt_len: int, children: int, steps: int) -> None:
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, VOCAB, prompt_len)
    per_sample = -(-(prompt_len + steps) // BLOCK)
    cache = _cache(children * per_sample + 64, prompt_len + steps)
    _append(cache, 0, prompt)
    kids = list(range(1, children + 1))
    cache.fork_sequences([0] * children, kids)
    cache.free_sequence(0)
    kv = np.zeros((LAYERS, children, 1, HEADS, HEAD_DIM), np.float32)
    for _ in range(steps):
        cache.append_kv_all_layers(kv, kv, kids)
    stats = cache.stats()
    unshared = children * per_sample
    ratio = stats.blocks_used / unshared
    table.add(
        workload=f"parallel sampling: {children} x ({prompt_len} + {steps} steps)",
        measure="blocks in use",
        llmir=stats.blocks_used,
        target=f"<= {0.2 * unshared:.0f} (0.2x)",
        reference=f"{unshared} unshared ({ratio:.3f}x)",
        verdict=_verdict(ratio <= 0.2),
    )


def limited_pool(table: Table, requests: int) -> None:
    """Popular prompts (16 documents of 512 tokens, 10% of the requests,
    freed with priority 1) amid a stream of one-off prompts (512 tokens,
    priority 0), one request at a time, through a pool a third of the
    trace's working set: LRU lets the one-off stream push a document out
    between two of its uses, priority retention keeps the documents."""
    rng = np.random.default_rng(3)
    documents = [rng.integers(0, VOCAB, 512) for _ in range(16)]
    trace: list[tuple[np.ndarray, int]] = []
    for _ in range(requests):
        if rng.random() < 0.1:
            doc = documents[int(rng.integers(0, len(documents)))]
            trace.append((np.concatenate([doc, rng.integers(0, VOCAB, 64)]), 1))
        else:
            trace.append((rng.integers(0, VOCAB, 512), 0))
    # Distinct blocks the trace stores if nothing is ever evicted.
    working_set = sum(-(-p.size // BLOCK) for p, _ in trace) - sum(
        512 // BLOCK for _, priority in trace if priority
    )
    working_set += len(documents) * 512 // BLOCK
    pool = working_set // 3
    for policy, blocks in (("lru", pool), ("priority", pool), ("lru", working_set)):
        cache = _cache(blocks, enable_prefix_caching=True, eviction=policy)
        for seq, (prompt, priority) in enumerate(trace):
            _request(cache, seq, prompt)
            cache.free_sequence(seq, priority=priority)
        stats = cache.stats()
        unbounded = blocks == working_set
        table.add(
            workload=(
                f"limited pool: {requests} requests, working set "
                f"{working_set} blocks = {working_set / pool:.1f}x pool"
            )
            if policy == "lru" and not unbounded
            else "",
            measure="hit rate, pool = working set"
            if unbounded
            else f"hit rate, {policy}",
            llmir=f"{100 * stats.hit_rate:.1f}%",
            target="(the most any policy can hit)"
            if unbounded
            else "no OutOfBlocksError",
            reference=f"{stats.evictions} evictions",
            verdict="" if unbounded else _verdict(True),  # here: nothing ran out
        )


# ---------------------------------------------------------------------------
# Bookkeeping


def _timed_pairs(do: Any, undo: Any, repeats: int, inner: int) -> Timing:
    """Seconds per `do()` (each followed by an untimed `undo()`)."""
    samples: list[float] = []
    for _ in range(repeats):
        total = 0.0
        for _ in range(inner):
            start = time.perf_counter()
            do()
            total += time.perf_counter() - start
            undo()
        samples.append(total / inner)
    return Timing(tuple(samples))


def bookkeeping(table: Table, prompt_len: int, batch: int, repeats: int) -> None:
    rng = np.random.default_rng(4)
    prompt = rng.integers(0, VOCAB, prompt_len)
    blocks = prompt_len // BLOCK
    cache = _cache(4 * blocks + 4 * batch, prompt_len + 64, enable_prefix_caching=True)
    _append(cache, 0, prompt)
    prefix = cache.sequences.prefix
    assert isinstance(prefix, PrefixCache)
    query = np.concatenate([prompt, [1]]).astype(np.int32)
    # Hash and lookup alone, then the whole call (attaching blocks too).
    lookup = measure(lambda: prefix.match(query, prompt_len), repeats=repeats)
    table.add(
        operation=f"prefix match, hash + lookup, {blocks} blocks",
        us=lookup,
        per_block_us=lookup.median / blocks * 1e6,
        target="<= 2 us/block",
        verdict=_verdict(lookup.median / blocks <= 2e-6),
    )
    whole = _timed_pairs(
        lambda: cache.match_prefix(1, query),
        lambda: cache.free_sequence(1),
        repeats,
        20,
    )
    table.add(
        operation=f"match_prefix call, {blocks} blocks attached",
        us=whole,
        per_block_us=whole.median / blocks * 1e6,
        target="<= 2 us/block",
        verdict=_verdict(whole.median / blocks <= 2e-6),
    )
    fork = _timed_pairs(
        lambda: cache.fork(0, 2), lambda: cache.free_sequence(2), repeats, 50
    )
    table.add(
        operation=f"fork of a {prompt_len}-token sequence",
        us=fork,
        per_block_us=fork.median / blocks * 1e6,
        target="<= 50 us",
        verdict=_verdict(fork.median <= 50e-6),
    )
    # Decode bookkeeping: plan + commit of whole steps for a batch of forked
    # sequences, with and without prefix caching (no data moved): 64 steps
    # from the fork, then the batch is freed and forked again.
    steps = 64
    ids = np.arange(1, batch + 1, dtype=np.int64)
    parents = np.zeros(batch, np.int64)
    for sharing in (False, True):
        step_cache = _cache(
            blocks + (steps // BLOCK + 2) * batch,
            prompt_len + steps,
            enable_prefix_caching=sharing,
        )
        _append(step_cache, 0, prompt)
        step_cache.fork_sequences(parents, ids)
        seqs = step_cache.sequences
        tokens = np.ones((batch, 1), np.int32) if sharing else None

        def decode(seqs: Any = seqs, tokens: Any = tokens) -> None:
            for _ in range(steps):
                seqs.commit_append(seqs.plan_append(ids, 1, None, tokens))

        def refork(cache: PagedKVCache = step_cache) -> None:
            cache.free_sequences(ids)
            cache.fork_sequences(parents, ids)

        timing = _timed_pairs(decode, refork, repeats, 3)
        per_step = Timing(tuple(t / steps for t in timing.samples))
        per_seq = per_step.median / batch
        table.add(
            operation=(
                f"decode step bookkeeping, batch {batch}, "
                + ("prefix caching + token ids" if sharing else "no prefix caching")
            ),
            us=per_step,
            per_seq_us=per_seq * 1e6,
            target="< 1 us/seq",
            verdict=_verdict(per_seq < 1e-6),
        )


def run(args: Any) -> list[Table]:
    quick = bool(args.quick)
    counts = Table(
        "Sharing: blocks and prefix hits (exact counts)",
        ["workload", "measure", "llmir", "target", "reference", "verdict"],
    )
    progress("shared system prompt ...")
    system_prompt(counts, 8 if quick else 64, 256 if quick else 2048)
    progress("unaligned prefixes ...")
    unaligned_prefixes(counts, 4 if quick else 16)
    progress("parallel sampling ...")
    parallel_sampling(counts, 512 if quick else 4096, 8, 32 if quick else 256)
    progress("limited pool ...")
    limited_pool(counts, 40 if quick else 400)
    timings = Table(
        "Sharing bookkeeping (host side; median ± half the interquartile range)",
        ["operation", "us", "per_block_us", "per_seq_us", "target", "verdict"],
    )
    progress("bookkeeping ...")
    bookkeeping(
        timings, 512 if quick else 4096, 16 if quick else 256, 5 if quick else 9
    )
    counts.print()
    timings.print()
    return [counts, timings]


def main() -> None:
    benchmark_main((__doc__ or "").splitlines()[0], run)


if __name__ == "__main__":
    main()
