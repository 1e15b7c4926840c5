"""llmir beyond one machine: the KV cache sharded over Ray actors.

    sharding.py   ShardPlan: by kv heads or by layers, and the cut of tensors
    actor.py      ShardActor: one shard's pool and kernels, in a Ray actor
    backend.py    ShardedBackend: the Backend that fans out to the shards
    cache.py      ShardedKVCache: PagedKVCache's bookkeeping over them

Ray is an optional extra (``pip install 'llmir[distributed]'``); it is
imported when a sharded cache is created, not by ``import llmir``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmir.distributed.cache import ShardedKVCache
    from llmir.distributed.sharding import ShardPlan

_EXPORTS = {
    "ShardPlan": "llmir.distributed.sharding",
    "ShardedKVCache": "llmir.distributed.cache",
}

__all__ = ["ShardPlan", "ShardedKVCache"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmir.distributed' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
