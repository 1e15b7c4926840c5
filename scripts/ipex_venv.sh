#!/usr/bin/env bash
# The IPEX peer of benchmarks/bench_ipex.py: Intel Extension for PyTorch 2.8
# needs torch 2.8 (ours is 2.13), so it gets its own virtualenv, .ipex-venv,
# with llmir installed beside it so that both run in one process on the same
# data.  About 3 GB: PyPI's torch 2.8 wheel pulls CUDA libraries that the
# CPU path never loads.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .ipex-venv
.ipex-venv/bin/python -m pip install --quiet torch==2.8.0 intel-extension-for-pytorch==2.8.0 psutil
.ipex-venv/bin/python -m pip install --quiet -e .
echo "ready: python -m benchmarks.bench_ipex"
