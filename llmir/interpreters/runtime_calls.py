"""The runtime functions of the `llmir.abi` contract, over numpy arrays.

Both forms of a program end here: the interpreter runs an `llm` op and the
``func.call`` it lowers to through the same function below, which is what
makes a module's results bit-identical before and after lowering.

Each function is named after `abi.RuntimeFunction.base` and takes a
`CallContext`, the element type that names its callee (or None), then the
op's operands in ABI order (the cache as a `KVCache`, tensors as numpy
arrays in the form `ElementType.host_dtype` gives, bf16 as uint16 bits) and
its decoded scalars.  It returns the call's results: the op's non-cache
results, honouring the static sizes the ABI passes (a block table padded to
its static width, a lookup to its static length; a sequence that does not
fit is an error, never a silent truncation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import BlockTableError, ShapeError
from llmir.runtime.dtypes import ElementType
from llmir.runtime.eviction import POLICIES
from llmir.runtime.geometry import PAD_BLOCK, CacheGeometry
from llmir.runtime.options import HEAVY_HITTER_SCORES, CacheOptions
from llmir.runtime.protocol import KVCache

Array = npt.NDArray[Any]
CacheFactory = Callable[[CacheGeometry, int, CacheOptions], KVCache]


@dataclass
class CallContext:
    """What the runtime functions need beyond their operands: how to create
    a cache of a geometry, a pool size and options (a `PagedKVCache` on some
    device, or the dense reference), and the list of every cache created, in
    order (for statistics)."""

    create_cache: CacheFactory
    caches: list[KVCache] = field(default_factory=list[KVCache])


def create_kv_cache(
    context: CallContext,
    element: ElementType,
    num_layers: int,
    num_heads: int,
    head_dim: int,
    block_size: int,
    max_seq_len: int,
    num_blocks: int,
    prefix_caching: bool,
    eviction: int,
    swap_blocks: int,
    window_tokens: int | None,
    sink_tokens: int | None,
    heavy_hitter_blocks: int | None,
    heavy_hitter_score: int,
) -> tuple[KVCache]:
    geometry = CacheGeometry(
        element, num_layers, num_heads, head_dim, block_size, max_seq_len
    )
    options = CacheOptions(
        prefix_caching,
        tuple(POLICIES)[eviction],
        swap_blocks,
        window_tokens,
        sink_tokens,
        heavy_hitter_blocks,
        HEAVY_HITTER_SCORES[heavy_hitter_score],
    )
    cache = context.create_cache(geometry, num_blocks, options)
    context.caches.append(cache)
    return (cache,)


def append_kv(
    context: CallContext,
    element: ElementType,
    cache: KVCache,
    keys: Array,
    values: Array,
    seq_ids: Array,
    token_ids: Array | None,
    layer: int,
) -> tuple[Array]:
    # An empty tensor is the lowered form of "no token ids".
    if token_ids is not None and token_ids.size == 0:
        token_ids = None
    return (cache.append_kv(keys, values, seq_ids, layer, token_ids=token_ids),)


def block_table(
    context: CallContext,
    element: None,
    cache: KVCache,
    seq_ids: Array,
    width: int | None,
) -> tuple[Array, Array]:
    table, lens = cache.block_table(seq_ids)
    return _fit_width(table, seq_ids, width), lens


def _fit_width(table: Array, seq_ids: Array, width: int | None) -> Array:
    """`table` padded with -1 to the static `width` of its result (None:
    dynamic, as it is); a sequence with more blocks is an error."""
    if width is None:
        return table
    if table.shape[1] > width:
        worst = int(np.argmax((table >= 0).sum(axis=1)))
        raise BlockTableError(
            f"sequence {int(seq_ids[worst])} holds "
            f"{int((table[worst] >= 0).sum())} blocks, but the block table has "
            f"room for {width}"
        )
    padded = np.full((table.shape[0], width), PAD_BLOCK, dtype=np.int32)
    padded[:, : table.shape[1]] = table
    return padded


def lookup_kv(
    context: CallContext,
    element: ElementType,
    cache: KVCache,
    table: Array,
    lens: Array,
    layer: int,
    max_len: int | None,
) -> tuple[Array, Array]:
    cache_element = cache.geometry.element_type
    # Read the stored values in the result's own numpy form when the lookup
    # gives exactly that (f16 as float16), else as float32 and convert.
    as_float32 = not (
        element is cache_element and element.lookup_dtype == element.host_dtype
    )
    if max_len is None:
        keys, values = cache.lookup_kv(table, lens, layer, as_float32=as_float32)
    else:
        longest = int(np.max(lens)) if lens.size else 0
        if longest > max_len:
            raise ShapeError(
                f"lookup of sequences up to {longest} tokens does not fit the "
                f"static length {max_len} of its result"
            )
        dtype = cache_element.out_dtype(as_float32)
        g = cache.geometry
        shape = (table.shape[0], max_len, g.num_heads, g.head_dim)
        out = (np.empty(shape, dtype), np.empty(shape, dtype))
        keys, values = cache.lookup_kv(
            table, lens, layer, as_float32=as_float32, out=out
        )
    return element.to_host(keys), element.to_host(values)


def paged_attention(
    context: CallContext,
    element: ElementType,
    query: Array,
    cache: KVCache,
    table: Array,
    lens: Array,
    layer: int,
    scale: float,
    causal: bool,
    sliding_window: int | None,
    logits_soft_cap: float | None,
    sink_tokens: int | None,
) -> tuple[Array]:
    # bf16 tensors travel as uint16 bits; the kernels take float values.
    query = element.from_host(query)
    output = cache.paged_attention(
        query,
        table,
        lens,
        layer,
        scale=scale,
        causal=causal,
        sliding_window=sliding_window,
        logits_soft_cap=logits_soft_cap,
        sink_tokens=sink_tokens,
    )
    return (element.to_host(output),)


def free_sequence(
    context: CallContext,
    element: None,
    cache: KVCache,
    seq_ids: Array,
    priority: int | None,
) -> tuple[()]:
    cache.free_sequences(seq_ids, priority=priority)
    return ()


def fork_sequence(
    context: CallContext, element: None, cache: KVCache, parents: Array, children: Array
) -> tuple[()]:
    cache.fork_sequences(parents, children)
    return ()


def match_prefix(
    context: CallContext,
    element: None,
    cache: KVCache,
    seq_ids: Array,
    token_ids: Array,
) -> tuple[Array]:
    return (cache.match_prefixes(seq_ids, token_ids),)


def reserve_slots(
    context: CallContext,
    element: None,
    cache: KVCache,
    seq_ids: Array,
    num_tokens: int,
    width: int | None,
) -> tuple[Array, Array, Array]:
    slots, table, lens = cache.reserve_slots(seq_ids, num_tokens, require_level=True)
    return slots, _fit_width(table, seq_ids, width), lens


def write_kv(
    context: CallContext,
    element: ElementType,
    cache: KVCache,
    keys: Array,
    values: Array,
    slots: Array,
    layer: int,
) -> tuple[()]:
    cache.write_kv(keys, values, slots, layer)
    return ()


def swap_out(
    context: CallContext, element: None, cache: KVCache, seq_ids: Array
) -> tuple[()]:
    cache.swap_out(seq_ids)
    return ()


def swap_in(
    context: CallContext, element: None, cache: KVCache, seq_ids: Array
) -> tuple[()]:
    cache.swap_in(seq_ids)
    return ()
