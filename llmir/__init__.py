"""llmir: an xDSL compiler frontend and runtime for the paged KV cache of LLM
inference.

    from llmir import PagedKVCache, paged_attention

    cache = PagedKVCache(num_layers=2, num_heads=8, head_dim=64, block_size=16,
                         max_seq_len=4096, dtype="f16", num_blocks=256)
    cache.append_kv(k, v, seq_ids=[0, 1], layer=0)
    table, lens = cache.block_table([0, 1])
    out = paged_attention(q, cache, table, lens, layer=0)

The names below are loaded on first use: ``import llmir`` (which ``xdsl-opt``
does to find the dialect) never loads Numba.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from llmir.runtime.attention import paged_attention
    from llmir.runtime.dtypes import ElementType, element_type
    from llmir.runtime.geometry import CacheGeometry
    from llmir.runtime.kv_cache import PagedKVCache
    from llmir.runtime.protocol import CacheStats, KVCache

_EXPORTS = {
    "CacheGeometry": "llmir.runtime.geometry",
    "CacheStats": "llmir.runtime.protocol",
    "ElementType": "llmir.runtime.dtypes",
    "KVCache": "llmir.runtime.protocol",
    "PagedKVCache": "llmir.runtime.kv_cache",
    "element_type": "llmir.runtime.dtypes",
    "paged_attention": "llmir.runtime.attention",
}

__all__ = [
    "CacheGeometry",
    "CacheStats",
    "ElementType",
    "KVCache",
    "PagedKVCache",
    "__version__",
    "element_type",
    "paged_attention",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmir' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
