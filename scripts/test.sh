#!/usr/bin/env bash
# The whole test suite: lint, unit tests, filecheck tests, and the GPU kernels
# under the CUDA simulator.  Run from anywhere inside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check .
python -m pytest -q tests/unit
NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/unit/cuda
lit -sv tests/filecheck
