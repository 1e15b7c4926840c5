"""The llmir runtime: paged KV cache memory management and CPU kernels.

Public names are imported lazily so that ``import llmir.runtime`` (and with
it the dialects that only need `dtypes`/`layout`) does not load Numba kernels.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmir.runtime.allocator import BlockAllocator
    from llmir.runtime.block import KVBlock
    from llmir.runtime.cpu_storage import CPUStorage
    from llmir.runtime.kv_cache import CacheStats, PagedKVCache
    from llmir.runtime.storage import KVStorage
    from llmir.runtime.validation import validate_block_table

_EXPORTS = {
    "BlockAllocator": "llmir.runtime.allocator",
    "KVBlock": "llmir.runtime.block",
    "CPUStorage": "llmir.runtime.cpu_storage",
    "CacheStats": "llmir.runtime.kv_cache",
    "PagedKVCache": "llmir.runtime.kv_cache",
    "KVStorage": "llmir.runtime.storage",
    "validate_block_table": "llmir.runtime.validation",
}

__all__ = [
    "BlockAllocator",
    "CPUStorage",
    "CacheStats",
    "KVBlock",
    "KVStorage",
    "PagedKVCache",
    "validate_block_table",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmir.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
