#!/usr/bin/env bash
# The whole test suite: lint, unit tests, filecheck tests, and the GPU kernels
# under the CUDA simulator.  Run from anywhere inside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check .
python -m pytest -q tests/unit
lit -sv tests/filecheck
