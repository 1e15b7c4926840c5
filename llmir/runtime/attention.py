"""Paged attention: the runtime function behind ``llm.paged_attention``.

    from llmir import paged_attention
    out = paged_attention(query, cache, block_table, seq_lens, layer=0)

reads keys and values straight from the cache's paged pool (layout in
`llmir.runtime.geometry`) without gathering them, on whatever device the
cache lives (it calls `KVCache.paged_attention`).

Semantics, for sequence ``b`` of length ``L = seq_lens[b]`` and
``query [batch, Tq, Hq, D]``:

* the Tq queries are the last Tq tokens of the sequence, at positions
  ``L - Tq .. L - 1`` (Tq = 1 is decode; Tq > 1 prefill or a prefill chunk,
  whose keys and values were appended to the cache before the call);
* query position ``pos`` attends key position ``t`` when ``0 <= t < L``,
  ``t <= pos`` if `causal`, and ``t > pos - sliding_window`` if a window is
  given (the last `sliding_window` tokens up to and including itself) or
  ``t < sink_tokens`` (StreamingLLM's attention sinks, only beside a
  window);
* positions are the model's original ones even after a cache pruned the
  tokens between the sinks and the window (`CacheOptions.window_tokens`):
  rotary embeddings are the caller's, applied before appending;
* logits are ``scale * q.k`` (default ``scale = 1/sqrt(D)``), then
  ``cap * tanh(logit / cap)`` when `logits_soft_cap` is given;
* query head ``j`` reads kv head ``j // (Hq // H)`` (GQA; MQA when H = 1);
* a query that attends no key (an empty sequence, or a padding query at a
  negative position when ``L < Tq``) yields zeros, never NaN.

Computation is in float32 with a single-pass online softmax, whatever the
element type (f32, or f16/bf16 stored as uint16 bits).  The output has the
query's dtype: float32, or numpy float16 for a float16 query (on a CUDA
cache, a device query gives a float32 device array).  numpy has no bfloat16;
pass bf16 queries as their float32 values (exact).

Every argument is checked before any work, with errors from `llmir.errors`
(`llmir.runtime.validation`).
"""

from __future__ import annotations

from typing import Any

from llmir.runtime.protocol import KVCache


def paged_attention(
    query: Any,
    cache: KVCache,
    block_table: Any,
    seq_lens: Any,
    layer: int = 0,
    scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    out: Any = None,
    sink_tokens: int | None = None,
) -> Any:
    """Attention of ``query [batch, Tq, Hq, D]`` over layer `layer` of
    `cache`, for the sequences described by `block_table`/`seq_lens`.

    Returns `out` (filled) or a new array of the query's shape.  The
    semantics are in the module docstring.
    """
    return cache.paged_attention(
        query,
        block_table,
        seq_lens,
        layer,
        scale=scale,
        causal=causal,
        sliding_window=sliding_window,
        logits_soft_cap=logits_soft_cap,
        sink_tokens=sink_tokens,
        out=out,
    )
