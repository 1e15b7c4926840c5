"""Reference implementations for tests and ``llmir-run --check``: slow,
obvious, float64, sharing nothing with the kernels they check.

* `reference`: `build_paged_pool` (a pool with NaN in every unowned slot) and
  `reference_paged_attention` (gather + dense softmax);
* `dense_cache`: `DenseReferenceCache`, the `KVCache` protocol over dense
  per-sequence arrays;
* `prefix_data`: `prefix_kv`, keys and values determined by the token
  prefix (the promise prefix caching relies on).
"""

from __future__ import annotations

from llmir.testing.dense_cache import DenseReferenceCache
from llmir.testing.prefix_data import prefix_kv
from llmir.testing.reference import (
    PagedPool,
    build_paged_pool,
    gather_sequence,
    reference_paged_attention,
)

__all__ = [
    "DenseReferenceCache",
    "PagedPool",
    "build_paged_pool",
    "gather_sequence",
    "prefix_kv",
    "reference_paged_attention",
]
