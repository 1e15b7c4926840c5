"""The CUDA backend's tests run only where its kernels can run: under the
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` in the environment before numba is
imported, as `scripts/test.sh` runs them, in a process of their own) or on a
real GPU (`scripts/gpu_check.sh`).  Anywhere else, e.g. in the main
``pytest tests/unit`` run, every test here is reported as skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def _backend_reason() -> str | None:
    """None when the kernels can run, else why not."""
    from llmir.runtime import cuda as kvcuda

    if kvcuda.simulator_enabled() or kvcuda.is_available():
        return None
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "NUMBA_ENABLE_CUDASIM=1 was set after numba was imported"
    return (
        "no GPU and the CUDA simulator is off: run "
        "`NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/unit/cuda`"
    )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    mine = [item for item in items if HERE in Path(str(item.path)).parents]
    if not mine:
        return
    reason = _backend_reason()
    if reason is None:
        return
    for item in mine:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
