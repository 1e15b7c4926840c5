#!/usr/bin/env bash
# The whole test suite: lint, unit tests, the GPU kernels under the CUDA
# simulator, and the filecheck tests.  Run from anywhere inside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check .
python -m pytest -q tests/unit --ignore=tests/unit/cuda
# The simulator must be chosen before numba is imported: its own process.
NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/unit/cuda
lit -sv tests/filecheck
