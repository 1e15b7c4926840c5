"""The `KVCache` protocol on the CUDA backend: the same trace of every
operation as on the CPU backend gives the same results."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import KINDS, TOLERANCE

from llmir import KVCache, PagedKVCache
from llmir.testing.conformance import BLOCK, HEAD_DIM, HEADS, LAYERS, protocol_trace


@pytest.mark.parametrize("kind_name", KINDS)
def test_cuda_cache_agrees_with_cpu_cache(kind_name: str) -> None:
    results = []
    for device in ("cpu", "cuda"):
        cache = PagedKVCache(
            LAYERS, HEADS, HEAD_DIM, BLOCK, 32, kind_name, num_blocks=24, device=device
        )
        assert isinstance(cache, KVCache) and cache.device == device
        results.append(protocol_trace(cache, np.random.default_rng(5)))
    cpu, gpu = results
    tol = TOLERANCE[kind_name]
    assert cpu.keys() == gpu.keys()
    for name, want in cpu.items():
        got = gpu[name]
        if name.startswith("lookup"):
            # The stored values: bit for bit.
            for g, w in zip(got, want, strict=True):
                assert g.dtype == w.dtype
                np.testing.assert_array_equal(g, w)
        elif isinstance(want, np.ndarray):
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)
        else:
            assert got == want, name
