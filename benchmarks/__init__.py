"""llmir's benchmarks: ``python -m benchmarks`` (see ``__main__``)."""

import importlib.util

# torch must load its OpenMP runtime before Numba starts its own thread pool
# (the `omp` threading layer): the other way round, torch's parallel kernels
# ran ~19x slower here (SDPA, bf16, 8 x 8 heads x 2048 tokens: 194 ms instead
# of 10 ms), which made every torch column of these tables a straw man.  The
# package is imported before any benchmark module, so this runs first.
if importlib.util.find_spec("torch") is not None:
    import torch  # noqa: F401  # pyright: ignore[reportUnusedImport]
