"""Every CPU benchmark in one command: ``python -m benchmarks``.

Runs, one after the other and each in its own process (so Numba's thread pool
and the page cache start equal), the runtime copies, paged attention and the
interpreter overhead.  Each prints its own table, with the machine's memory
bandwidth measured in the same run.  Pass ``--quick`` for a smoke run.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("bench_runtime", "bench_attention", "bench_interpreter")


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    status = 0
    for name in BENCHMARKS:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        args = [sys.executable, "-m", f"benchmarks.{name}"]
        if quick:
            args.append("--steps=20" if name == "bench_interpreter" else "--quick")
        status |= subprocess.call(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
