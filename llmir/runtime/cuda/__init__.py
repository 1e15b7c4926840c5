"""CUDA backend of the paged KV cache: numba.cuda kernels over a
device-resident pool with the layout of `llmir.runtime.geometry`.

    from llmir import PagedKVCache, paged_attention

    cache = PagedKVCache(32, 8, 128, 16, 8192, "f16", num_blocks=4096,
                         device="cuda")            # pool in GPU memory
    cache.append_kv(keys, values, seq_ids, layer=0)  # host bookkeeping + scatter
    table, lens = cache.block_table(seq_ids)
    out = paged_attention(query, cache, table, lens, layer=0)

Importing this package never touches numba.cuda.  `CUDABackend` and the
launchers are loaded on first attribute access, after `loader.cuda_module()`
has checked that numba's CUDA target and a GPU (or the simulator,
``NUMBA_ENABLE_CUDASIM=1``) are usable; otherwise that access raises
`llmir.errors.DeviceError` saying what is missing.

Modules: `loader` (availability), `codecs` (per-element-type load/store),
`cache_kernels` (append/gather), `attention_kernels` (decode, split merge,
prefill), `launch` (host launchers and `AttentionPlan`), `backend`
(`CUDABackend`, what `PagedKVCache(device="cuda")` holds).
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
    from llmir.runtime.cuda import launch
    from llmir.runtime.cuda.backend import CUDABackend

# Attribute -> submodule that defines it; each submodule imports numba.cuda.
_LAZY = {"CUDABackend": "backend", "launch": None}

__all__ = [
    "CUDABackend",
    "cuda_module",
    "describe",
    "implementation_name",
    "is_available",
    "launch",
    "simulator_enabled",
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
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cuda_module()  # raises DeviceError with the reason before any kernel import
    module = _LAZY[name]
    if module is None:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
