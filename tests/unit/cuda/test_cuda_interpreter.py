"""The interpreter and `llmir-run --device cuda` dispatch to the CUDA kernels
and agree with the CPU run (tiny shapes: this runs under the simulator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmir.interpreters.runner import run_function
from llmir.tools.run import main

PROGRAM = """
!cache = !llm.paged_kv_cache<ELEM, 2, 1, 4, 2, 8>
func.func @main(%k : tensor<2x3x1x4xf32>, %q : tensor<2x1x2x4xf32>)
    -> (!cache, tensor<2x1x2x4xf32>, tensor<2x3x1x4xf32>, tensor<2x3xi32>) {
  %ids = arith.constant dense<[4, 7]> : tensor<2xi32>
  %c = llm.create_kv_cache {num_blocks = 6 : i64} : !cache
  %c1, %idx = llm.append_kv %c, %k, %k, %ids {layer = 1 : i32}
      : (!cache, tensor<2x3x1x4xf32>, tensor<2x3x1x4xf32>, tensor<2xi32>)
      -> (!cache, tensor<2x3xi32>)
  %t, %l = llm.block_table %c1, %ids
      : (!cache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
  %kk, %vv = llm.lookup_kv %c1, %t, %l {layer = 1 : i32}
      : (!cache, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x3x1x4xf32>, tensor<2x3x1x4xf32>)
  %o = llm.paged_attention %q, %c1, %t, %l {layer = 1 : i32}
      : (tensor<2x1x2x4xf32>, !cache, tensor<2x4xi32>, tensor<2xi32>)
      -> tensor<2x1x2x4xf32>
  func.return %c1, %o, %kk, %idx
      : !cache, tensor<2x1x2x4xf32>, tensor<2x3x1x4xf32>, tensor<2x3xi32>
}
"""


@pytest.mark.parametrize("element", ["f32", "f16", "i8"])
@pytest.mark.parametrize("passes", ["", "convert-llm-to-func"])
def test_cuda_run_matches_cpu_run(element: str, passes: str) -> None:
    rng = np.random.default_rng(0)
    k = rng.standard_normal((2, 3, 1, 4)).astype(np.float32)
    q = rng.standard_normal((2, 1, 2, 4)).astype(np.float32)
    program = PROGRAM.replace("ELEM", element)
    cpu = run_function(program, k, q, passes=passes)
    gpu = run_function(program, k, q, passes=passes, device="cuda")
    assert gpu[0].device == "cuda"
    np.testing.assert_allclose(gpu[1], cpu[1], rtol=1e-5, atol=1e-6)
    # Lookups: the stored values (an i8 one decodes ``code * scale + offset``,
    # which a GPU may fuse).
    np.testing.assert_allclose(gpu[2], cpu[2], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(gpu[3], cpu[3])  # same allocator, same blocks


def test_llmir_run_device_cuda(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.mlir"
    path.write_text(PROGRAM.replace("ELEM", "f32"))
    assert main([str(path), "--random-args", "1", "--device", "cuda", "--check"]) == 0
    assert "check: PASS" in capsys.readouterr().out
