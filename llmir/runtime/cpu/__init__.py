"""The CPU backend: the pool in host memory, Numba kernels over it.

Modules: `codecs` (element conversions inside kernels), `copy_kernels`
(append and lookup), `attention_kernels` (paged attention), `backend`
(`CPUBackend`, what `PagedKVCache(device="cpu")` holds).
"""

from __future__ import annotations

from llmir.runtime.cpu.backend import CPUBackend

__all__ = ["CPUBackend"]
