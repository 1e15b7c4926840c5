"""Small helpers shared by the CUDA tests (imported as ``cuda_helpers``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmir.runtime.dtypes import ElementType

KINDS = ("f32", "f16", "bf16")

# Agreement with the float64 reference computed from the stored values.
TOLERANCE = {"f32": 1e-5, "f16": 1e-3, "bf16": 1e-3}


def to_device(array: np.ndarray[Any, Any]) -> Any:
    from numba import cuda

    return cuda.to_device(array)


def assert_close(actual: Any, expected: Any, kind: ElementType) -> None:
    tol = TOLERANCE[kind.name]
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)
