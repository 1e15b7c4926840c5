"""The `KVCache` protocol: `PagedKVCache` and the dense float64 reference
implement it, and give the same results on the same trace of every
operation (the CUDA backend runs the same trace in tests/unit/cuda)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llmir import KVCache, PagedKVCache
from llmir.testing import DenseReferenceCache
from llmir.testing.conformance import (
    BLOCK,
    HEAD_DIM,
    HEADS,
    LAYERS,
    protocol_trace,
    sharing_trace,
)

TOLERANCE = {"f32": 1e-5, "f16": 1e-3, "bf16": 1e-3}


def paged(dtype: str) -> PagedKVCache:
    return PagedKVCache(LAYERS, HEADS, HEAD_DIM, BLOCK, 32, dtype, num_blocks=24)


def assert_same_results(got: dict[str, Any], want: dict[str, Any], tol: float) -> None:
    assert got.keys() == want.keys()
    for name in want:
        for g, w in zip(
            np.atleast_1d(got[name]), np.atleast_1d(want[name]), strict=True
        ):
            if isinstance(w, np.ndarray) and w.dtype.kind == "f":
                assert g.dtype == w.dtype, name
                np.testing.assert_allclose(
                    np.asarray(g, np.float64), w, rtol=tol, atol=tol, err_msg=name
                )
            else:
                assert np.array_equal(g, w), name


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_paged_cache_agrees_with_the_dense_reference(dtype: str) -> None:
    cache = paged(dtype)
    dense = DenseReferenceCache.from_geometry(cache.geometry, cache.num_blocks)
    assert isinstance(cache, KVCache) and isinstance(dense, KVCache)
    got = protocol_trace(cache, np.random.default_rng(3))
    want = protocol_trace(dense, np.random.default_rng(3))
    assert_same_results(got, want, TOLERANCE[dtype])
    assert got["reset"] and got["freed"]


def test_the_trace_can_fail() -> None:
    """A cache whose attention is off by one ulp-scale error is caught."""
    cache = paged("f32")
    dense = DenseReferenceCache.from_geometry(cache.geometry, cache.num_blocks)
    got = protocol_trace(cache, np.random.default_rng(3))
    want = protocol_trace(dense, np.random.default_rng(3))
    got["prefill"] = got["prefill"] * (1 + 1e-3)
    with pytest.raises(AssertionError):
        assert_same_results(got, want, TOLERANCE["f32"])


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_sharing_agrees_with_the_dense_reference(dtype: str) -> None:
    """Forks, copy-on-write and prefix matches (whole, partial, of a freed
    sequence) give what an unshared dense cache holds."""
    cache = PagedKVCache(
        LAYERS,
        HEADS,
        HEAD_DIM,
        BLOCK,
        32,
        dtype,
        num_blocks=24,
        enable_prefix_caching=True,
    )
    dense = DenseReferenceCache.from_geometry(
        cache.geometry, cache.num_blocks, cache.options
    )
    got = sharing_trace(cache)
    want = sharing_trace(dense)
    assert_same_results(got, want, TOLERANCE[dtype])
    # Whole blocks, then 2 tokens of a partly matching block; after a free,
    # 3 whole blocks, and 1 block plus 1 token of a padded shorter prompt.
    assert got["match.partial"] == [10]
    assert got["match.freed"] == [12, 5]
    cache.check_invariants()
    stats = cache.stats()
    assert stats.cow_copies == 2  # three writers of one shared block
    assert stats.prefix_partial_hit_tokens == 3
