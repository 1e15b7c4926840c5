"""Paged attention on the CPU: the runtime function behind ``llm.paged_attention``.

    out = paged_attention(query, cache, block_table, seq_lens, layer=0)

reads keys and values straight from the cache's paged pool (layout in
`llmir.runtime.layout`) without gathering them.

Semantics, for sequence ``b`` of length ``L = seq_lens[b]`` and
``query [batch, Tq, Hq, D]``:

* the Tq queries are the last Tq tokens of the sequence, at positions
  ``L - Tq .. L - 1`` (Tq = 1 is decode; Tq > 1 prefill or a prefill chunk,
  whose keys and values were appended to the cache before the call);
* query position ``pos`` attends key position ``t`` when ``0 <= t < L``,
  ``t <= pos`` if `causal`, and ``t > pos - sliding_window`` if a window is
  given (the last `sliding_window` tokens up to and including itself);
* logits are ``scale * q.k`` (default ``scale = 1/sqrt(D)``), then
  ``cap * tanh(logit / cap)`` when `logits_soft_cap` is given;
* query head ``j`` reads kv head ``j // (Hq // H)`` (GQA; MQA when H = 1);
* a query that attends no key (an empty sequence, or a padding query at a
  negative position when ``L < Tq``) yields zeros, never NaN.

Computation is in float32 with a single-pass online softmax, whatever the
storage kind (f32, or f16/bf16 stored as uint16 bits).  The output has the
query's dtype: float32, or numpy float16 for a float16 query.  numpy has no
bfloat16; pass bf16 queries as their float32 values (exact).

Every argument is checked before any work, with errors from `llmir.errors`;
block tables are checked by the same `validate_block_table` as the cache's
own lookups.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from llmir.errors import DeviceError, DTypeError, ShapeError
from llmir.runtime.attention_checks import (
    check_attention_options,
    check_query_shape,
)
from llmir.runtime.attention_kernels import run_paged_attention
from llmir.runtime.dtypes import StorageKind
from llmir.runtime.validation import check_layer, validate_block_table

_QUERY_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


class AttentionCache(Protocol):
    """What `paged_attention` needs of a cache
    (`llmir.runtime.kv_cache.PagedKVCache` has it)."""

    @property
    def kv_pool(self) -> Any: ...
    @property
    def kind(self) -> StorageKind: ...
    @property
    def num_layers(self) -> int: ...

    def validate_block_table(
        self, block_table: Any, seq_lens: Any
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]: ...


def paged_attention(
    query: npt.ArrayLike,
    cache: AttentionCache,
    block_table: npt.ArrayLike,
    seq_lens: npt.ArrayLike,
    layer: int = 0,
    scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    out: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
    """Attention of ``query [batch, Tq, Hq, D]`` over layer `layer` of
    `cache`, for the sequences described by `block_table`/`seq_lens`.

    Returns `out` (filled) or a new array of the query's shape and dtype.
    The semantics are in the module docstring.
    """
    check_layer(layer, cache.num_layers)
    pool = cache.kv_pool
    if not isinstance(pool, np.ndarray):
        raise DeviceError(
            "paged_attention runs on the CPU, but this cache's pool is a "
            f"{type(pool).__name__} (device {getattr(cache, 'device', '?')!r})"
        )
    table, lens = cache.validate_block_table(block_table, seq_lens)
    return _checked_attention(
        query,
        pool[layer],
        cache.kind,
        table,
        lens,
        scale,
        causal,
        sliding_window,
        logits_soft_cap,
        out,
    )


def paged_attention_on_pool(
    query: npt.ArrayLike,
    layer_pool: npt.NDArray[Any],
    kind: StorageKind,
    block_table: npt.ArrayLike,
    seq_lens: npt.ArrayLike,
    scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    out: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
    """`paged_attention` over a bare pool of one layer,
    ``[num_blocks, H, 2, block_size, D]`` of `kind`'s storage dtype (for
    callers that manage their own pool, e.g. the IR interpreter)."""
    if layer_pool.ndim != 5 or layer_pool.shape[2] != 2:
        raise ShapeError(
            "layer_pool must be [num_blocks, num_heads, 2, block_size, head_dim], "
            f"got shape {layer_pool.shape}"
        )
    if layer_pool.dtype != kind.storage_dtype:
        raise DTypeError(
            f"a {kind.name} pool stores {kind.storage_dtype}, got {layer_pool.dtype}"
        )
    if not layer_pool.flags.c_contiguous:
        raise ShapeError("layer_pool must be C-contiguous")
    block_size = layer_pool.shape[3]
    table, lens = validate_block_table(
        block_table,
        seq_lens,
        block_size=block_size,
        num_blocks=layer_pool.shape[0],
        # A bare pool has no length limit of its own: the table's coverage
        # (checked next, with its own message) is the limit.
        max_seq_len=np.iinfo(np.int32).max,
    )
    return _checked_attention(
        query,
        layer_pool,
        kind,
        table,
        lens,
        scale,
        causal,
        sliding_window,
        logits_soft_cap,
        out,
    )


def _checked_attention(
    query: npt.ArrayLike,
    layer_pool: npt.NDArray[Any],
    kind: StorageKind,
    table: npt.NDArray[np.int32],
    lens: npt.NDArray[np.int32],
    scale: float | None,
    causal: bool,
    sliding_window: int | None,
    logits_soft_cap: float | None,
    out: npt.NDArray[Any] | None,
) -> npt.NDArray[Any]:
    """Check query and options against a validated table, then run."""
    q = np.asarray(query)
    if q.dtype not in _QUERY_DTYPES:
        raise DTypeError(
            f"query dtype {q.dtype} is not supported, expected float32 or float16 "
            "(pass bf16 queries as their float32 values)"
        )
    num_heads, head_dim = layer_pool.shape[1], layer_pool.shape[4]
    check_query_shape(q.shape, lens.shape[0], num_heads, head_dim)
    options = check_attention_options(scale, head_dim, sliding_window, logits_soft_cap)
    result = _check_out(out, q.shape, q.dtype)

    # The kernel works in float32 on C-contiguous arrays; write straight into
    # `result` when it already is one.
    work = result if result.dtype == np.float32 else np.empty(q.shape, np.float32)
    if q.size:
        run_paged_attention(
            np.ascontiguousarray(q, dtype=np.float32),
            layer_pool,
            kind.code,
            table,
            lens,
            work,
            scale=options.scale,
            causal=bool(causal),
            sliding_window=options.sliding_window,
            logits_soft_cap=options.logits_soft_cap,
        )
    if work is not result:
        result[...] = work
    return result


def _check_out(
    out: npt.NDArray[Any] | None, shape: tuple[int, ...], dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise DTypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != shape:
        raise ShapeError(f"out has shape {out.shape}, expected the query's {shape}")
    if out.dtype != dtype:
        raise DTypeError(f"out has dtype {out.dtype}, expected the query's {dtype}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ShapeError("out must be a writeable C-contiguous array")
    return out
