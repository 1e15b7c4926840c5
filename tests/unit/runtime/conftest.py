"""Fixtures shared by the runtime tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from llmir.runtime import PagedKVCache

StateFn = Callable[[PagedKVCache], tuple[Any, bytes]]


def _cache_state(cache: PagedKVCache) -> tuple[Any, bytes]:
    return cache.snapshot(), np.asarray(cache.kv_pool).tobytes()


@pytest.fixture
def cache_state() -> StateFn:
    """Bookkeeping snapshot plus the pool's bytes: equal states mean a call
    changed nothing at all."""
    return _cache_state
