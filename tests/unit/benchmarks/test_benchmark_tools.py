"""The benchmarks' own tools: timing statistics, the unstable and
cache-resident flags, tables printed once, the command line, the plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import (
    Table,
    Timing,
    cache_resident,
    last_level_cache_bytes,
    measure,
    paged_read,
    paged_sum,
)

ROOT = Path(__file__).parents[3]


def test_timing_median_quartiles_and_spread() -> None:
    t = Timing((1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median == 3.0
    assert t.quartiles == (2.0, 4.0)
    assert t.spread == pytest.approx(2.0 / 3.0)
    assert t.unstable
    assert not Timing((1.0, 1.01, 1.0, 0.99, 1.0)).unstable
    d = t.as_dict()
    assert (d["median"], d["min"], d["max"], d["repeats"]) == (3000.0, 1000.0, 1e5, 5)


def test_measure_repeats_after_warmup() -> None:
    calls: list[int] = []
    timing = measure(lambda: calls.append(1), repeats=7, warmup=2)
    assert len(calls) == 9 and len(timing.samples) == 7


def test_cache_resident_is_about_the_last_level_cache() -> None:
    llc = last_level_cache_bytes()
    assert llc >= 1 << 20
    assert cache_resident(llc // 2) and not cache_resident(4 * llc)


@pytest.mark.parametrize("ahead", [0, 1, 2, 100])
def test_paged_sum_reads_exactly_the_runs_of_the_sequences_blocks(
    ahead: int,
) -> None:
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((12, 3, 2, 4, 8)).astype(np.float32)
    table = np.array([[5, 0, 7, -1], [2, 11, -1, -1]], dtype=np.int32)
    blocks_per_seq = np.array([3, 2], dtype=np.int32)
    used = [5, 0, 7, 2, 11]
    runs = pool.reshape(12, 3, -1)
    flat = pool.reshape(-1).view(np.uint8)

    def total() -> float:
        return float(paged_sum(runs, table, blocks_per_seq, flat, ahead))

    want = pool[used].astype(np.float64).sum()
    assert total() == pytest.approx(want, rel=1e-5)
    # A block outside the sequences' counts changes nothing.
    pool[3] += 1.0
    assert total() == pytest.approx(want, rel=1e-5)
    pool[11, 2] += 1.0
    assert total() == pytest.approx(want + 64, rel=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_paged_read_counts_the_whole_words_of_each_run(dtype: type) -> None:
    # Runs of 3 x 7 elements: 21, 42 and 84 bytes, of which the float32
    # words read are 20, 40 and 84 bytes.
    pool = np.ones((6, 2, 3, 7), dtype=dtype)
    table = np.array([[1, 4, 2]], dtype=np.int32)
    gbs, timing = paged_read(pool, table, np.array([3], np.int32), repeats=3)
    run_bytes = pool[0, 0].nbytes
    words = run_bytes - run_bytes % 4
    assert gbs * 1e9 * timing.median == pytest.approx(3 * 2 * words, rel=1e-9)
    assert len(timing.samples) == 3


def test_table_prints_each_row_once_with_notes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = Table("t", ["name", "ms", "% limit"])
    table.add(name="steady", ms=Timing((1e-3,) * 5), **{"% limit": 50.0},
              working_set_bytes=1 << 34)  # fmt: skip
    table.add(name="noisy", ms=Timing((1e-3, 2e-3, 3e-3, 9e-3)), **{"% limit": 120.0},
              working_set_bytes=1024)  # fmt: skip
    table.print()
    out = capsys.readouterr().out
    assert out.count("steady") == 1 and out.count("noisy") == 1
    noisy = next(line for line in out.splitlines() if "noisy" in line)
    assert noisy.rstrip().endswith("unstable, cache-resident")
    steady = next(line for line in out.splitlines() if "steady" in line)
    assert "1.00 ±0.00" in steady and not steady.rstrip().endswith("resident")
    rows = table.as_json()["rows"]
    assert rows[1]["note"] == "unstable, cache-resident"
    assert rows[0]["ms"]["median"] == pytest.approx(1.0)


def test_help_runs_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0
    assert "--only" in result.stdout and "--json" in result.stdout
    assert "===" not in result.stdout  # no benchmark started


def test_plot_draws_the_percent_rows(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks.plot import plot_limits

    table = Table("t", ["op", "ms", "% limit"])
    table.add(op="a", ms=Timing((1.0,)), **{"% limit": 70.0})
    table.add(op="b", ms=Timing((1.0,)), **{"% limit": 90.0}, working_set_bytes=10)
    results = json.loads(json.dumps({"bench_x": [table.as_json()]}))
    out = tmp_path / "p.png"
    plot_limits(results, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sharing_benchmark_counts_meet_their_targets() -> None:
    """The sharing workloads report exact block and hit counts (not times):
    on the quick shapes every count row meets its target, and the limited
    pool never runs out of blocks."""
    import argparse

    from benchmarks import bench_sharing

    counts, timings = bench_sharing.run(argparse.Namespace(quick=True, json=None))
    verdicts = [row["verdict"] for row in counts.rows if row["verdict"]]
    assert verdicts and set(verdicts) == {"meets"}
    assert len(timings.rows) == 5


def test_passes_benchmark_keeps_outputs_and_plans_exact() -> None:
    """The passes benchmark's program rows are bit-identical before and
    after the pass, and its plans equal what the runtime allocates."""
    import argparse

    from benchmarks import bench_passes

    step, program, plan = bench_passes.run(argparse.Namespace(quick=True, json=None))
    assert len(step.rows) == 3
    assert {row["outputs"] for row in program.rows} == {"bit-identical"}
    assert all("runtime pool equal" in row["bytes"] for row in plan.rows)


def test_fixed_cost_row_times_the_call_and_the_bare_kernel() -> None:
    from benchmarks.bench_attention import fixed_cost_rows

    table = fixed_cost_rows(repeats=1)
    kernel, call = table.rows
    assert kernel["path"] == "kernel launch alone" and call["path"] == "paged_attention"
    assert kernel["call us"].median > 0 and call["call us"].median > 0
    assert call["checks us"] == pytest.approx(
        (call["call us"].median - kernel["call us"].median) * 1e6
    )


def test_option_rows_time_each_option_against_plain_causal() -> None:
    from benchmarks.bench_attention import OPTIONS, Shape, option_rows
    from llmir.runtime.dtypes import element_type

    shape = Shape(1, 32, 4, 2, 16, element_type("f32"), queries=32)
    table = option_rows([shape], repeats=1)
    assert [row["option"] for row in table.rows] == list(OPTIONS)
    causal = table.rows[0]["ms"].median
    for row in table.rows:
        assert row["x causal"] == pytest.approx(row["ms"].median / causal)
        assert (row["batch"], row["context"], row["queries"]) == (1, 32, 32)


def test_ipex_benchmark_without_ipex_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import bench_ipex

    monkeypatch.setattr(bench_ipex, "ipex_available", lambda: False)
    monkeypatch.setattr(bench_ipex, "IPEX_VENV", tmp_path / "no-venv")
    bench_ipex.main()
    assert "bash scripts/ipex_venv.sh" in capsys.readouterr().out
