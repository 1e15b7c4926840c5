"""Lazy, checked access to ``numba.cuda``.

Nothing under `llmir.runtime.cuda` imports ``numba.cuda`` at module import
time except through `cuda_module()`, so ``import llmir`` (and importing this
package) works on machines without a GPU or without the CUDA packages.  The
first real use calls `cuda_module()`, which raises `DeviceError` naming
exactly what is missing.

Two situations are accepted:

* the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` set before numba is first
  imported): kernels run as Python threads, used by the test suite in CI;
* a real GPU with a working driver, through NVIDIA's ``numba-cuda`` package
  (``pip install 'llmir[gpu]'``), or numba's deprecated built-in target when
  that is all there is.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from llmir.errors import DeviceError

INSTALL_HINT = (
    "install NVIDIA's CUDA target with `pip install 'llmir[gpu]'` "
    "(numba-cuda; add its toolkit extra on a machine that has only the driver: "
    "`pip install 'numba-cuda[cu12]'` or `'numba-cuda[cu13]'`, matching the "
    "driver's CUDA major version)"
)


def simulator_enabled() -> bool:
    """True when numba runs CUDA kernels in its Python simulator."""
    from numba.core import config

    return bool(getattr(config, "ENABLE_CUDASIM", 0))


@cache
def cuda_module() -> Any:
    """Return ``numba.cuda`` once it is known to be usable.

    Raises `DeviceError` when numba's CUDA target cannot be imported or, outside
    the simulator, when no GPU/driver is usable.
    """
    try:
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise DeviceError(
            f"numba.cuda cannot be imported ({exc}); {INSTALL_HINT}"
        ) from exc
    if simulator_enabled():
        return cuda
    try:
        available = bool(cuda.is_available())
    except Exception as exc:  # pragma: no cover - driver-specific failures
        raise DeviceError(f"the CUDA driver could not be initialised: {exc}") from exc
    if not available:
        raise DeviceError(
            "no usable CUDA GPU: numba.cuda.is_available() is False "
            "(no NVIDIA driver or device found; set NUMBA_ENABLE_CUDASIM=1 before "
            "importing numba to run the kernels in the simulator instead)"
        )
    return cuda


def implementation_name() -> str:
    """Which CUDA target numba is using: 'numba-cuda', 'Built-in' or 'simulator'."""
    if simulator_enabled():
        return "simulator"
    cuda = cuda_module()
    return str(getattr(cuda, "implementation", "unknown"))


def describe() -> str:
    """One line naming the target and device, for benchmark and check output."""
    cuda = cuda_module()
    if simulator_enabled():
        flag = os.environ.get("NUMBA_ENABLE_CUDASIM")
        return f"CUDA simulator (NUMBA_ENABLE_CUDASIM={flag})"
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    return (
        f"{name} (cc {device.compute_capability}, numba.cuda {implementation_name()})"
    )
