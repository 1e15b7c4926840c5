"""The GPU benchmark's code paths run end to end at tiny size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llmir.runtime import cuda as kvcuda

ROOT = Path(__file__).resolve().parents[3]


def test_bench_gpu_tiny_runs() -> None:
    args = [sys.executable, "-m", "benchmarks.bench_gpu", "--tiny"]
    if kvcuda.simulator_enabled():
        args.append("--simulator")
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for heading in (
        "copy bandwidth",
        "decode, f16",
        "append (f32 in",
        "prefill, causal",
    ):
        assert heading in result.stdout, result.stdout
