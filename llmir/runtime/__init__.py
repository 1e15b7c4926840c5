"""The llmir runtime: the device-neutral core of the paged KV cache.

    runtime/            geometry, element types, validation, allocator,
                        sequences, the KVCache protocol, PagedKVCache
    runtime/cpu/        the CPU backend (Numba kernels)
    runtime/cuda/       the CUDA backend (numba.cuda kernels)

Public names are imported lazily so that ``import llmir.runtime`` (and with
it the dialect, which reads `dtypes` and `geometry`) does not load Numba.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmir.runtime.allocator import BlockAllocator
    from llmir.runtime.attention import paged_attention
    from llmir.runtime.backend import Backend, create_backend
    from llmir.runtime.block import KVBlock
    from llmir.runtime.dtypes import ElementType, element_type
    from llmir.runtime.geometry import CacheGeometry
    from llmir.runtime.kv_cache import PagedKVCache
    from llmir.runtime.protocol import CacheStats, KVCache
    from llmir.runtime.validation import BlockTable, validate_block_table

_EXPORTS = {
    "Backend": "llmir.runtime.backend",
    "BlockAllocator": "llmir.runtime.allocator",
    "BlockTable": "llmir.runtime.validation",
    "CacheGeometry": "llmir.runtime.geometry",
    "CacheStats": "llmir.runtime.protocol",
    "ElementType": "llmir.runtime.dtypes",
    "KVBlock": "llmir.runtime.block",
    "KVCache": "llmir.runtime.protocol",
    "PagedKVCache": "llmir.runtime.kv_cache",
    "create_backend": "llmir.runtime.backend",
    "element_type": "llmir.runtime.dtypes",
    "paged_attention": "llmir.runtime.attention",
    "validate_block_table": "llmir.runtime.validation",
}

__all__ = [
    "Backend",
    "BlockAllocator",
    "BlockTable",
    "CacheGeometry",
    "CacheStats",
    "ElementType",
    "KVBlock",
    "KVCache",
    "PagedKVCache",
    "create_backend",
    "element_type",
    "paged_attention",
    "validate_block_table",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmir.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
