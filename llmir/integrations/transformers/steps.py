"""How one attention layer of one forward pass runs over llmir's cache: the
runtime called directly, or the `llm` IR of the step under the interpreter
(`llmir.frontend`).  Both take the same inputs and must give the same
outputs; `LlmirCache` holds one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from llmir.runtime.kv_cache import PagedKVCache

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class AttentionOptions:
    """What a model's attention layer asks for beyond the cache's geometry
    (transformers passes them to the attention function)."""

    scale: float | None = None
    sliding_window: int | None = None
    logits_soft_cap: float | None = None


class LayerStep(Protocol):
    """Append the step's keys/values ``[batch, T, H, D]`` of `layer` for
    `seq_ids`, then attend with ``query [batch, T, Hq, D]``; returns the
    output ``[batch, T, Hq, D]`` (the query's dtype)."""

    def __call__(
        self,
        cache: PagedKVCache,
        layer: int,
        query: Array,
        keys: Array,
        values: Array,
        seq_ids: npt.NDArray[np.int64],
        token_ids: npt.NDArray[np.int64] | None,
        options: AttentionOptions,
    ) -> Array: ...


def append_step(
    cache: PagedKVCache,
    layer: int,
    keys: Array,
    values: Array,
    seq_ids: npt.NDArray[np.int64],
    token_ids: npt.NDArray[np.int64] | None,
) -> tuple[Array, Array]:
    """The first half of `direct_step`: append, then the block table and
    lengths attention reads."""
    cache.append_kv(keys, values, seq_ids, layer, token_ids=token_ids)
    return cache.block_table(seq_ids)


def attend_step(
    cache: PagedKVCache,
    layer: int,
    query: Array,
    table: Array,
    lens: Array,
    options: AttentionOptions,
) -> Array:
    """The second half of `direct_step`: paged attention with the layer's
    options."""
    return cache.paged_attention(
        query,
        table,
        lens,
        layer,
        scale=options.scale,
        sliding_window=options.sliding_window,
        logits_soft_cap=options.logits_soft_cap,
    )


def direct_step(
    cache: PagedKVCache,
    layer: int,
    query: Array,
    keys: Array,
    values: Array,
    seq_ids: npt.NDArray[np.int64],
    token_ids: npt.NDArray[np.int64] | None,
    options: AttentionOptions,
) -> Array:
    """The step through the runtime's Python API."""
    table, lens = append_step(cache, layer, keys, values, seq_ids, token_ids)
    return attend_step(cache, layer, query, table, lens, options)
