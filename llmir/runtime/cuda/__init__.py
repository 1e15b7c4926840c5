"""CUDA backend of the paged KV cache: numba.cuda kernels over a
device-resident pool with the layout of `llmir.runtime.layout`.

Importing this package never touches numba.cuda.  The kernels, launchers and
the device storage are loaded on first attribute access, after
`loader.cuda_module()` has checked that numba's CUDA target and a GPU (or the
simulator, ``NUMBA_ENABLE_CUDASIM=1``) are usable; otherwise that access
raises `llmir.errors.DeviceError` saying what is missing.

    from llmir.runtime import PagedKVCache
    from llmir.runtime import cuda as kvcuda

    cache = PagedKVCache(32, 8, 128, 16, 8192, "f16", num_blocks=4096,
                         device="cuda")            # pool in GPU memory
    cache.append_kv(keys, values, seq_ids, layer=0)  # host bookkeeping + scatter
    table, lens = cache.block_table(seq_ids)
    out = kvcuda.paged_attention(query, cache, table, lens, layer=0)

Modules: `loader` (availability), `codecs` (per-kind element load/store),
`cache_kernels` (append/gather), `attention_kernels` (decode, split merge,
prefill), `validation` (slot checks), `ops` (host launchers and
`AttentionPlan`), `storage` (`CudaKVStorage`, the `KVStorage` backend).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llmir.runtime.cuda.loader import (
    cuda_module,
    describe,
    implementation_name,
    simulator_enabled,
)

if TYPE_CHECKING:
    from llmir.runtime.cuda.ops import (
        AttentionPlan,
        append_kv,
        choose_splits,
        gather_kv,
        paged_attention_on_pool,
        plan_attention,
        sm_count,
    )
    from llmir.runtime.cuda.storage import (
        CudaKVStorage,
        create_storage,
        paged_attention,
    )

# Attribute -> submodule that defines it; each submodule imports numba.cuda.
_LAZY = {
    "append_kv": "ops",
    "gather_kv": "ops",
    "paged_attention_on_pool": "ops",
    "choose_splits": "ops",
    "sm_count": "ops",
    "plan_attention": "ops",
    "AttentionPlan": "ops",
    "CudaKVStorage": "storage",
    "create_storage": "storage",
    "paged_attention": "storage",
}

__all__ = [
    "AttentionPlan",
    "CudaKVStorage",
    "append_kv",
    "choose_splits",
    "create_storage",
    "cuda_module",
    "describe",
    "gather_kv",
    "implementation_name",
    "is_available",
    "paged_attention",
    "paged_attention_on_pool",
    "plan_attention",
    "simulator_enabled",
    "sm_count",
]


def is_available() -> bool:
    """Whether the CUDA backend can run here (a GPU, or the simulator)."""
    from llmir.errors import DeviceError

    try:
        cuda_module()
    except DeviceError:
        return False
    return True


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cuda_module()  # raises DeviceError with the reason before any kernel import
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
