#!/usr/bin/env bash
# The whole test suite: lint, unit tests, the GPU kernels under the CUDA
# simulator, and the filecheck tests.  Run from anywhere inside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check .
# Two processes, a file each at a time: most of the unit tests' time is Numba
# compiling kernels, on one core per process.  Both share Numba's on-disk
# cache (NUMBA_CACHE_DIR, or __pycache__), so a kernel one compiled the other
# loads.
python -m pytest -q -n 2 --dist loadfile tests/unit \
    --ignore=tests/unit/cuda --ignore=tests/unit/distributed
# Ray starts once for the distributed tests (a session fixture): one process.
python -m pytest -q tests/unit/distributed
# The simulator must be chosen before numba is imported: its own process.
NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -n 2 --dist loadfile tests/unit/cuda
lit -sv tests/filecheck
