"""Compile every CUDA kernel of llmir to PTX, without a GPU.

The simulator runs kernels as Python, so it cannot catch what only the real
compiler sees (typing of float16 stores, libdevice calls, dynamic shared
memory slices...).  This script type-checks and lowers each kernel, for every
storage kind, through numba-cuda and NVVM for a chosen compute capability:

    pip install 'numba-cuda[cu12]'     # brings libnvvm and libnvrtc as wheels
    python scripts/gpu_check_ptx.py [--cc 9.0] [--site DIR]

``--site DIR`` adds a ``pip install --target DIR`` folder (its .pth hooks
included) and points the loader at the NVIDIA libraries inside it.  Exit
status 0 when every kernel compiled.
"""

from __future__ import annotations

import argparse
import os
import site
import sys
from pathlib import Path
from typing import Any

parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
parser.add_argument("--cc", default="9.0", help="compute capability, e.g. 8.0 or 9.0")
parser.add_argument("--site", help="extra site folder holding numba-cuda and wheels")
parser.add_argument("--reexec", action="store_true", help=argparse.SUPPRESS)
args = parser.parse_args()
if args.site:
    site.addsitedir(args.site)
    libs = [str(p) for p in Path(args.site, "nvidia").glob("**/lib*") if p.is_dir()]
    os.environ["LD_LIBRARY_PATH"] = ":".join(
        [*libs, os.environ.get("LD_LIBRARY_PATH", "")]
    )
    if "--reexec" not in sys.argv:  # the dynamic loader reads LD_LIBRARY_PATH at start
        os.execv(sys.executable, [sys.executable, *sys.argv, "--reexec"])
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from numba import cuda, typeof  # noqa: E402
from numba import types as nt  # noqa: E402

# Compiling needs no device; the loader would refuse without one.
cuda.is_available = lambda: True

from llmir.runtime.cuda.attention_kernels import attention_kernels  # noqa: E402
from llmir.runtime.cuda.cache_kernels import (  # noqa: E402
    cache_kernels,
    copy_kernel,
    swap_kernels,
)
from llmir.runtime.cuda.quant_kernels import quant_kernels  # noqa: E402
from llmir.runtime.dtypes import BF16, F16, F32, I4, I8  # noqa: E402


def array(dtype: Any, ndim: int) -> Any:
    return nt.Array(typeof(np.dtype(dtype).type(0)), ndim, "C")


def main() -> int:
    cc = tuple(int(x) for x in args.cc.split("."))
    print("numba.cuda:", getattr(cuda, "implementation", "?"), "cc", cc)
    failures = 0
    f32, i32 = nt.float32, nt.int32
    idx1, idx2, long1 = array(np.int32, 1), array(np.int32, 2), array(np.int64, 1)
    out4, out3 = array(np.float32, 4), array(np.float32, 3)
    kinds = (
        (F32, np.float32), (F16, np.float16), (BF16, np.uint16), (I8, np.uint8),
        (I4, np.uint8),
    )  # fmt: skip
    for kind, kernel_dtype in kinds:
        jobs: list[tuple[str, Any, tuple[Any, ...]]] = []
        if kind.quant is None:
            for raw in (False, True):
                ck = cache_kernels(kind, raw)
                pool = kind.storage_dtype if raw else kernel_dtype
                inp = np.uint16 if raw and kind.is_half else np.float32
                jobs += [
                    (f"append_layer raw={raw}", ck.append_layer,
                     (array(pool, 5), array(inp, 3), array(inp, 3), idx1)),
                    (f"append_all_layers raw={raw}", ck.append_all_layers,
                     (array(pool, 6), array(inp, 4), array(inp, 4), idx1)),
                    (f"gather raw={raw}", ck.gather,
                     (array(pool, 5), idx2, idx1, array(inp, 4), array(inp, 4))),
                ]  # fmt: skip
            jobs.append(
                ("copy_blocks", copy_kernel(),
                 (array(kind.storage_dtype, 6), idx1, idx1, nt.int64))
            )  # fmt: skip
            layer_rank = 5
        else:
            qk = quant_kernels(kind)
            for inp in (np.float32, np.float16):
                jobs.append(
                    (f"quantize_runs {np.dtype(inp).name}", qk.quantize_runs,
                     (array(np.uint8, 5), array(inp, 4), array(inp, 4), long1,
                      long1, long1))
                )  # fmt: skip
            jobs.append(
                ("dequantize", qk.dequantize,
                 (array(np.uint8, 4), idx2, idx1, out4, out4))
            )  # fmt: skip
            layer_rank = 4
        flat = array(kind.storage_dtype, 3)
        sk = swap_kernels()
        jobs += [
            ("swap gather", sk.gather, (flat, idx1, flat)),
            ("swap scatter", sk.scatter, (flat, flat, idx1)),
            ("copy_whole", sk.copy_whole, (flat, idx1, idx1)),
        ]
        ak = attention_kernels(kind)
        jobs += [
            ("attention", ak.attention,
             (out4, array(kernel_dtype, layer_rank), idx2, idx1, f32, i32, i32, i32,
              i32, i32, i32, f32, out4, out4, out3, out3, out3,
              array(np.float32, 5))),
            ("merge_splits", ak.merge_splits, (out4, out3, out3, out4)),
        ]  # fmt: skip
        for name, kernel, sig in jobs:
            try:
                compile_ptx: Any = getattr(cuda, "compile_ptx")  # noqa: B009
                ptx, _ = compile_ptx(kernel.py_func, sig, cc=cc)
                print(f"ok    {kind.name:4} {name:28} {len(ptx):7d} chars of PTX")
            except Exception as exc:
                failures += 1
                print(f"FAIL  {kind.name:4} {name}: {type(exc).__name__}: {exc}")
    print("all kernels compiled" if not failures else f"{failures} kernels failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
