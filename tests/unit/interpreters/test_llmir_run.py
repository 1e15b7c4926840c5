"""`llmir-run`: inputs, outputs, passes, --check, and one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from numba.core import event
from run_output import stderr_lines

import llmir
from llmir.dialects import llm
from llmir.tools import progress
from llmir.tools.run import main

PROGRAM = """
!cache = !llm.paged_kv_cache<ELEM, 1, 2, 4, 4, 16>
func.func @main(%k : tensor<1x3x2x4xf32>, %q : tensor<1x1x2x4xf32>)
    -> (tensor<1x1x2x4xf32>, tensor<1xi32>) {
  %ids = arith.constant dense<5> : tensor<1xi32>
  %c = llm.create_kv_cache {num_blocks = 4 : i64} : !cache
  %c1, %idx = llm.append_kv %c, %k, %k, %ids
      : (!cache, tensor<1x3x2x4xf32>, tensor<1x3x2x4xf32>, tensor<1xi32>)
      -> (!cache, tensor<1x3xi32>)
  %t, %l = llm.block_table %c1, %ids
      : (!cache, tensor<1xi32>) -> (tensor<1x4xi32>, tensor<1xi32>)
  %o = llm.paged_attention %q, %c1, %t, %l
      : (tensor<1x1x2x4xf32>, !cache, tensor<1x4xi32>, tensor<1xi32>)
      -> tensor<1x1x2x4xf32>
  func.return %o, %l : tensor<1x1x2x4xf32>, tensor<1xi32>
}
"""


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "prog.mlir"
    path.write_text(PROGRAM.replace("ELEM", "f32"))
    return path


def _softmax_attention(k: np.ndarray, q: np.ndarray) -> np.ndarray:
    # One query token against three keys (= values), per head, in float64.
    out = np.zeros((1, 1, 2, 4))
    for h in range(2):
        logits = k[0, :, h].astype(np.float64) @ q[0, 0, h] / 2.0
        w = np.exp(logits - logits.max())
        out[0, 0, h] = w @ k[0, :, h] / w.sum()
    return out


def test_inputs_from_npz_and_results_saved(
    program: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    k = rng.standard_normal((1, 3, 2, 4)).astype(np.float32)
    q = rng.standard_normal((1, 1, 2, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", arg0=k, arg1=q)
    out = tmp_path / "out.npz"
    code = main(
        [str(program), "--input", str(tmp_path / "in.npz"), "--output", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "result1: int32[1] [3]" in printed
    saved = np.load(out)
    np.testing.assert_allclose(saved["result0"], _softmax_attention(k, q), rtol=1e-5)
    assert saved["result1"].tolist() == [3]


def test_npy_inputs_lowered_and_checked(
    program: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "k.npy", np.ones((1, 3, 2, 4), np.float32))
    np.save(tmp_path / "q.npy", np.ones((1, 1, 2, 4), np.float32))
    args = [str(program), "--input", str(tmp_path / "k.npy")]
    args += ["--input", str(tmp_path / "q.npy"), "-p", "convert-llm-to-func"]
    assert main([*args, "--check", "--stats"]) == 0
    printed = capsys.readouterr().out
    assert "check: PASS" in printed
    assert "blocks        1 used" in printed


@pytest.mark.parametrize("element", ["f16", "bf16"])
def test_half_caches_pass_the_check(
    tmp_path: Path, element: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "half.mlir"
    path.write_text(PROGRAM.replace("ELEM", element))
    assert main([str(path), "--random-args", "3", "--check"]) == 0
    assert "tolerance 0.001" in capsys.readouterr().out


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = stderr_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith("llmir-run: error: ")
    return lines[0]


def test_errors_exit_2_with_one_line(
    program: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = str(program)
    assert "no function @nope" in _error(
        capsys, p, "--symbol", "nope", "--random-args", "0"
    )
    assert "takes 2 arguments, 0 were given" in _error(capsys, p)
    assert "cannot read" in _error(capsys, str(tmp_path / "missing.mlir"))
    np.save(tmp_path / "bad.npy", np.zeros((2, 2), np.float32))
    bad_shape = _error(capsys, p, "--input", str(tmp_path / "bad.npy"))
    assert (
        "argument 0 of @main has shape [2, 2], expected tensor<1x3x2x4xf32>"
        in bad_shape
    )
    np.save(tmp_path / "int.npy", np.zeros((1, 3, 2, 4), np.float64))
    assert "has dtype float64, expected float32" in _error(
        capsys, p, "--input", str(tmp_path / "int.npy"), "--random-args", "0"
    )
    (tmp_path / "junk.npy").write_text("not an array")
    assert "cannot read input" in _error(
        capsys, p, "--input", str(tmp_path / "junk.npy")
    )
    three = [p, "--random-args", "0"] + ["--input", str(tmp_path / "bad.npy")] * 3
    assert "takes 2 arguments, 3 were given" in _error(capsys, *three)
    assert "Unrecognized passes" in _error(capsys, p, "-p", "no-such-pass")


def test_runtime_error_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "full.mlir"
    path.write_text(
        PROGRAM.replace("ELEM", "f32").replace("num_blocks = 4", "num_blocks = 0")
    )
    # num_blocks = 0 is rejected by the verifier, before running.
    assert "num_blocks" in _error(capsys, str(path), "--random-args", "0")


def test_cuda_device_without_gpu_is_a_clear_error(
    program: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmir.runtime import cuda

    if cuda.is_available():
        pytest.skip("a CUDA device (or the simulator) is available here")
    message = _error(capsys, str(program), "--random-args", "0", "--device", "cuda")
    assert "cuda" in message.lower()


def test_args_in_attribute_syntax_and_verbose(
    program: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # xdsl-run's --args form: the first argument as a dense attribute, the
    # rest random.  All-equal keys make attention return exactly that key.
    keys = "dense<0.5> : tensor<1x3x2x4xf32>"
    assert main([str(program), "--args", keys, "--random-args", "0", "--verbose"]) == 0
    printed = capsys.readouterr().out
    assert "result0: float32[1, 1, 2, 4] [0.5, 0.5, 0.5" in printed
    assert "[[[[0.5 0.5 0.5 0.5]" in printed  # --verbose prints the whole array


def test_args_of_the_wrong_kind_is_one_line(
    program: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = _error(capsys, str(program), "--args", "3 : i32", "--random-args", "0")
    assert "dense<...>" in message or "i32" in message


def test_progress_is_reported_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Report at every op instead of once a second, to see the counts.
    monkeypatch.setattr(progress, "REPORT_EVERY_SECONDS", 0.0)
    loop = """
!cache = !llm.paged_kv_cache<f32, 1, 1, 2, 4, 128>
func.func @main(%x : tensor<1x1x1x2xf32>) -> tensor<1x1x1x2xf32> {
  %ids = arith.constant dense<0> : tensor<1xi32>
  %c = llm.create_kv_cache {num_blocks = 32 : i64} : !cache
  %lb = arith.constant 0 : index
  %ub = arith.constant 100 : index
  %one = arith.constant 1 : index
  %y, %cf = scf.for %i = %lb to %ub step %one iter_args(%xi = %x, %ci = %c)
      -> (tensor<1x1x1x2xf32>, !cache) {
    %ca, %b = llm.append_kv %ci, %xi, %xi, %ids
        : (!cache, tensor<1x1x1x2xf32>, tensor<1x1x1x2xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
    %t, %l = llm.block_table %ca, %ids : (!cache, tensor<1xi32>) -> (tensor<1x32xi32>, tensor<1xi32>)
    %o = llm.paged_attention %xi, %ca, %t, %l
        : (tensor<1x1x1x2xf32>, !cache, tensor<1x32xi32>, tensor<1xi32>) -> tensor<1x1x1x2xf32>
    scf.yield %o, %ca : tensor<1x1x1x2xf32>, !cache
  }
  func.return %y : tensor<1x1x1x2xf32>
}
"""
    path = tmp_path / "loop.mlir"
    path.write_text(loop)
    assert main([str(path), "--random-args", "0", "--progress"]) == 0
    err = capsys.readouterr().err
    # The create, then 3 llm ops per step of the 100-step loop.
    assert "progress: step 50/100, 154 llm ops, " in err
    assert "progress: step 99/100, 301 llm ops, " in err
    assert stderr_lines(err)[-1].startswith("llmir-run: progress: 301 llm ops, ")


def test_progress_reports_about_once_a_second() -> None:
    """With a clock that advances 0.3 s per op: a report every 4th op."""
    ticks = iter(i * 0.3 for i in range(100))
    stream = io.StringIO()
    listener = progress.Progress(stream, clock=lambda: next(ticks))
    op = llm.FreeSequenceOp.__new__(llm.FreeSequenceOp)
    for _ in range(10):
        listener.will_interpret_op(op, ())
    lines = stream.getvalue().splitlines()
    assert [line.split(", ")[0] for line in lines] == [
        "llmir-run: progress: 4 llm ops",
        "llmir-run: progress: 8 llm ops",
    ]


def test_compile_time_is_announced_and_reported_apart() -> None:
    stream = io.StringIO()
    with progress.CompileNotice("f16", stream) as notice:
        for _ in range(2):  # two kernels, the second with a nested helper
            event.start_event("numba:compile")
            event.start_event("numba:compile")
            event.end_event("numba:compile")
            event.end_event("numba:compile")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("llmir-run: compiling kernels for f16 (first run only")
    assert lines[1].startswith("llmir-run: compiled 2 kernel(s) in ")
    assert notice.compiles == 2 and notice.seconds >= 0


def test_cached_kernels_are_not_announced() -> None:
    stream = io.StringIO()
    with progress.CompileNotice("f16", stream):
        pass
    assert stream.getvalue() == ""


def test_help_lists_the_llm_passes_and_examples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in ("convert-llm-to-func", "llm-kv-cache-stats", "llm-verify-kv-cache"):
        assert name in out
    assert "llmir-run examples/decode.mlir --random-args 0 --stats --check" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"llmir-run {llmir.__version__}"


def test_output_names_the_file_it_wrote(
    program: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main([str(program), "--random-args", "0", "--output", str(tmp_path / "r")]) == 0
    )
    assert f"saved 2 results to {tmp_path / 'r.npz'}" in capsys.readouterr().out
    assert (tmp_path / "r.npz").exists()


def test_superseded_versions_are_rejected_unless_no_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "stale.mlir"
    path.write_text(
        PROGRAM.replace("ELEM", "f32").replace(
            "llm.block_table %c1", "llm.block_table %c"
        )
    )
    assert main([str(path), "--random-args", "0"]) == 2
    assert "superseded it" in capsys.readouterr().err
    # The runtime cache is one object: the stale version reads the same state.
    assert main([str(path), "--random-args", "0", "--no-verify"]) == 0
