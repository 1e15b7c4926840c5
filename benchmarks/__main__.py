"""Every CPU benchmark in one command: ``python -m benchmarks``.

Runs the runtime copies, paged attention, the interpreter overhead, the
sharing workloads, the passes, memory tiers, pruning and the IPEX comparison
(in its own virtualenv, once scripts/ipex_venv.sh has made it) one after the
other, each in its own process (so Numba's thread pool and the page cache
start equal).  Each
prints its tables once, with the machine's memory bandwidth measured in the
same run, medians and spreads.

    python -m benchmarks                       # everything (a few minutes)
    python -m benchmarks --quick               # smoke run
    python -m benchmarks --only bench_attention --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHMARKS = (
    "bench_runtime",
    "bench_attention",
    "bench_interpreter",
    "bench_sharing",
    "bench_passes",
    "bench_block_size",
    "bench_distributed",
    "bench_memory",
    "bench_streaming",
    "bench_pruning",
    "bench_ipex",
    "bench_generate",
    "bench_quantized",
)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run llmir's CPU benchmarks, each in its own process.",
    )
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only these ({', '.join(BENCHMARKS)}); repeatable",
    )
    parser.add_argument("--json", metavar="PATH", help="write every table as JSON")
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="draw %% of the bandwidth limit by row (needs matplotlib: "
        "pip install -e '.[plot]')",
    )
    args = parser.parse_args()
    status = 0
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.only or BENCHMARKS:
            print(f"\n=== benchmarks.{name} ===", flush=True)
            out = Path(folder) / f"{name}.json"
            command = [sys.executable, "-m", f"benchmarks.{name}", "--json", str(out)]
            if args.quick:
                command.append("--quick")
            code = subprocess.call(command)
            status |= code
            if code == 0 and out.exists():
                results[name] = json.loads(out.read_text())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        from benchmarks.plot import plot_limits

        plot_limits(results, Path(args.plot))
        print(f"wrote {args.plot}")
    return status


if __name__ == "__main__":
    sys.exit(main())
