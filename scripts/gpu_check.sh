#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: check the CUDA stack, run the
# CUDA test suite for real (no simulator), then the GPU benchmark.
#
#   bash scripts/gpu_check.sh            # everything
#   bash scripts/gpu_check.sh --tests    # stack check + tests only
#
# Needs: python3 with numpy, numba, pytest, and NVIDIA's numba-cuda with a CUDA
# toolkit it can find (libnvvm, libnvrtc; numba-cuda[cu12] or [cu13] from PyPI
# bring them as wheels).  Wheels in .whl/ (e.g. carried to a machine without
# network access) are installed first into /tmp/llmir-site.  llmir itself runs
# from this checkout; xdsl (a core dependency, pure Python: its element-type
# registry names IR types) and its two small dependencies travel as wheels
# when the machine lacks them.  To carry wheels, here:
#   python3 -m pip download --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 -d .whl 'numba-cuda[cu13]'
# (then keep only what the GPU machine lacks; they travel in the 64 MiB tree).  If $OUT is set, the
# full log and the benchmark table are written there too.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${OUT:+$OUT/gpu_check.log}
unset NUMBA_ENABLE_CUDASIM
export PYTHONUNBUFFERED=1

say() { printf '\n== %s\n' "$*"; }

if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing carried wheels from .whl/"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/llmir-site .whl/*.whl || { echo "wheel install failed"; exit 2; }
    # A --target folder on PYTHONPATH does not run its .pth files, and
    # numba-cuda hooks `numba.cuda` through one: process them at start-up.
    printf 'import site\nsite.addsitedir("/tmp/llmir-site")\n' >/tmp/llmir-site/sitecustomize.py
    export PYTHONPATH=/tmp/llmir-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# numba-cuda finds libnvvm/libnvrtc through pip wheels or CUDA_HOME.
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then
    export CUDA_HOME=/usr/local/cuda
fi

say "CUDA stack"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found or no device"
"$PY" - <<'PYEOF'
import importlib.metadata as md
import sys

def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None

print("python", sys.version.split()[0])
for name in ("numpy", "numba", "numba-cuda", "cuda-bindings", "cuda-python",
             "nvidia-cuda-nvcc-cu12", "nvidia-cuda-nvrtc-cu12", "nvidia-nvjitlink-cu12",
             "nvidia-cuda-nvrtc", "nvidia-nvjitlink", "cuda-toolkit", "pytest"):
    print(f"  {name:24} {version(name) or '-'}")
missing = []
try:
    import numpy, numba  # noqa: F401
except ImportError as exc:
    missing.append(f"numpy/numba ({exc})")
if version("numba-cuda") is None:
    print("WARNING: numba-cuda is not installed; numba's deprecated built-in CUDA "
          "target will be used if present. Install `numba-cuda[cu12]` (CUDA 12 "
          "driver) or `numba-cuda[cu13]` (CUDA 13 driver).")
if missing:
    sys.exit("MISSING: " + "; ".join(missing))
from llmir.errors import DeviceError
from llmir.runtime import cuda as kvcuda
try:
    cuda = kvcuda.cuda_module()
except DeviceError as exc:
    sys.exit(f"MISSING: {exc}")
print("target:", kvcuda.describe())
# Compile and run one tiny kernel: this needs libnvvm (NVVM) and, for some
# features, libnvrtc; failures here name the library that was not found.
import numpy as np

@cuda.jit
def add_one(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] += 1

try:
    x = cuda.to_device(np.zeros(4, np.float32))
    add_one[1, 32](x)
    assert (x.copy_to_host() == 1).all()
except Exception as exc:
    sys.exit(
        f"MISSING: compiling/running a kernel failed: {type(exc).__name__}: {exc}\n"
        "  libnvvm comes with nvidia-cuda-nvcc-cu12 (or the CUDA toolkit; set "
        "CUDA_HOME), libnvrtc with nvidia-cuda-nvrtc-cu12, libnvJitLink with "
        "nvidia-nvjitlink-cu12: `pip install 'numba-cuda[cu12]'` brings all three."
    )
print("kernel compile + launch: ok")
PYEOF
status=$?
if [ $status -ne 0 ]; then
    echo "CUDA stack check failed (see MISSING above)"
    exit $status
fi

: > ${LOG:-/dev/null}
say "torch CUDA tensors used in place (__cuda_array_interface__)"
"$PY" - <<'PYEOF' 2>&1 | tee -a ${LOG:-/dev/null}
import numpy as np
from llmir import PagedKVCache, paged_attention
try:
    import torch
except ImportError:
    raise SystemExit("torch not installed: skipped")
rng = np.random.default_rng(0)
keys = rng.standard_normal((2, 37, 4, 64), dtype=np.float32)
query = rng.standard_normal((2, 1, 16, 64), dtype=np.float32)
results = []
for device in ("cpu", "cuda"):
    cache = PagedKVCache(2, 4, 64, 16, 256, "bf16", num_blocks=16, device=device)
    k = torch.from_numpy(keys).cuda() if device == "cuda" else keys
    cache.append_kv(k, k, [0, 1])
    table, lens = cache.block_table([0, 1])
    q = torch.from_numpy(query).cuda() if device == "cuda" else query
    out = paged_attention(q, cache, table, lens)
    results.append(np.asarray(torch.as_tensor(out, device="cuda").cpu()) if device == "cuda" else out)
err = float(np.max(np.abs(results[0] - results[1])))
print(f"torch CUDA in, device array out: max |cuda - cpu| = {err:.2e}")
raise SystemExit(0 if err < 1e-3 else 1)
PYEOF
interop=${PIPESTATUS[0]}

say "CUDA tests on the GPU (tests/unit/cuda)"
"$PY" -m pytest -q -p no:cacheprovider -W ignore::numba.core.errors.NumbaPerformanceWarning \
    tests/unit/cuda 2>&1 | tee -a ${LOG:-/dev/null}
tests=${PIPESTATUS[0]}
if [ "${1:-}" = "--tests" ]; then
    echo "torch interop exit $interop, tests exit $tests"
    [ "$interop" -eq 0 ] && [ "$tests" -eq 0 ]
    exit
fi

say "benchmark (benchmarks/bench_gpu.py)"
"$PY" -m benchmarks.bench_gpu 2>&1 | tee ${OUT:+$OUT/bench_gpu.txt}
bench=${PIPESTATUS[0]}
echo
echo "torch interop exit $interop, tests exit $tests, benchmark exit $bench"
[ "$interop" -eq 0 ] && [ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
