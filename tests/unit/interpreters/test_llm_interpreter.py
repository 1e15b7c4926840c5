"""The interpreter plugin: every llm op and the whole example program, run
before and after `convert-llm-to-func`, against numpy references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmir.errors import (
    BlockTableError,
    OutOfBlocksError,
    SequenceError,
    SequenceSwappedError,
)
from llmir.interpreters.runner import reference_caches, run_function
from llmir.runtime.dtypes import decode, element_type, encode
from llmir.testing.reference import reference_paged_attention

EXAMPLES = Path(__file__).parents[3] / "examples"

OPS_PROGRAM = """
!cache = !llm.paged_kv_cache<ELEM, 2, 2, 8, 4, 32>
func.func @main(%k : tensor<2x5x2x8xf32>, %v : tensor<2x5x2x8xf32>,
                %q : tensor<2x2x4x8xf32>, %ids : tensor<2xi32>)
    -> (!cache, tensor<2x5xi32>, tensor<2x8xi32>, tensor<2xi32>,
        tensor<2x8x2x8xf32>, tensor<2x8x2x8xf32>, tensor<2x2x4x8xf32>) {
  %c = llm.create_kv_cache {num_blocks = 16 : i64} : !cache
  %c1, %idx = llm.append_kv %c, %k, %v, %ids {layer = 1 : i32}
      : (!cache, tensor<2x5x2x8xf32>, tensor<2x5x2x8xf32>, tensor<2xi32>)
      -> (!cache, tensor<2x5xi32>)
  %t, %l = llm.block_table %c1, %ids
      : (!cache, tensor<2xi32>) -> (tensor<2x8xi32>, tensor<2xi32>)
  %kk, %vv = llm.lookup_kv %c1, %t, %l {layer = 1 : i32}
      : (!cache, tensor<2x8xi32>, tensor<2xi32>)
      -> (tensor<2x8x2x8xf32>, tensor<2x8x2x8xf32>)
  %o = llm.paged_attention %q, %c1, %t, %l {layer = 1 : i32, scale = 0.25 : f32}
      : (tensor<2x2x4x8xf32>, !cache, tensor<2x8xi32>, tensor<2xi32>)
      -> tensor<2x2x4x8xf32>
  func.return %c1, %idx, %t, %l, %kk, %vv, %o
      : !cache, tensor<2x5xi32>, tensor<2x8xi32>, tensor<2xi32>,
        tensor<2x8x2x8xf32>, tensor<2x8x2x8xf32>, tensor<2x2x4x8xf32>
}
"""


def _inputs(seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((2, 5, 2, 8)).astype(np.float32)
    v = rng.standard_normal((2, 5, 2, 8)).astype(np.float32)
    q = rng.standard_normal((2, 2, 4, 8)).astype(np.float32)
    return [k, v, q, np.array([3, 9], np.int32)]


@pytest.mark.parametrize("element", ["f32", "f16", "bf16"])
def test_every_op_matches_numpy_reference(element: str) -> None:
    kind = element_type(element)
    k, v, q, ids = _inputs()
    cache, idx, table, lens, keys, values, out = run_function(
        OPS_PROGRAM.replace("ELEM", element), k, v, q, ids
    )
    # Five tokens in blocks of 4: two blocks per sequence, -1 past them.
    assert lens.tolist() == [5, 5]
    assert (table[:, 2:] == -1).all() and (table[:, :2] >= 0).all()
    assert len(set(table[:, :2].reshape(-1).tolist())) == 4
    # Every appended token's block is the table's block for its position.
    assert (idx == table[:, np.arange(5) // 4]).all()
    # Lookup returns exactly the stored values (inputs rounded to storage),
    # zero-padded to the static length 8.
    stored_k = decode(encode(k, kind), kind)
    stored_v = decode(encode(v, kind), kind)
    np.testing.assert_array_equal(keys[:, :5], stored_k)
    np.testing.assert_array_equal(values[:, :5], stored_v)
    assert not keys[:, 5:].any() and not values[:, 5:].any()
    # Attention against the float64 reference over the same pool.
    want = reference_paged_attention(
        q, cache.kv_pool[1], kind, table, lens, scale=0.25, causal=True
    )
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("element", ["f32", "f16", "bf16"])
def test_lowered_ops_are_bit_identical(element: str) -> None:
    program = OPS_PROGRAM.replace("ELEM", element)
    direct = run_function(program, *_inputs(1))
    lowered = run_function(program, *_inputs(1), passes="convert-llm-to-func")
    np.testing.assert_array_equal(direct[0].kv_pool, lowered[0].kv_pool)
    for a, b in zip(direct[1:], lowered[1:], strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("passes", ["", "convert-llm-to-func"])
def test_sliding_window_and_soft_cap_reach_the_kernel(passes: str) -> None:
    program = OPS_PROGRAM.replace("ELEM", "f32").replace(
        "scale = 0.25 : f32}",
        "scale = 0.25 : f32, sliding_window = 2 : i32, logits_soft_cap = 0.5 : f32}",
    )
    k, v, q, ids = _inputs(4)
    cache, _, table, lens, _, _, out = run_function(
        program, k, v, q, ids, passes=passes
    )
    want = reference_paged_attention(
        q,
        cache.kv_pool[1],
        element_type("f32"),
        table,
        lens,
        scale=0.25,
        sliding_window=2,
        logits_soft_cap=0.5,
    )
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # The options matter: without them the result is different.
    plain = reference_paged_attention(
        q, cache.kv_pool[1], element_type("f32"), table, lens, scale=0.25
    )
    assert not np.allclose(out, plain, atol=1e-3)


def _decode_inputs(seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    shapes = [(1, 7, 4, 32), (1, 3, 4, 32), (1, 12, 4, 32), (3, 1, 4, 32)]
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def test_decode_example_before_and_after_lowering() -> None:
    program = (EXAMPLES / "decode.mlir").read_text()
    direct = run_function(program, *_decode_inputs(0))
    lowered = run_function(program, *_decode_inputs(0), passes="convert-llm-to-func")
    for a, b in zip(direct, lowered, strict=True):
        np.testing.assert_array_equal(a, b)
    assert direct[2].tolist() == [23, 19, 28]


@pytest.mark.parametrize(
    "passes",
    ["llm-reserve-slots-per-step", "llm-reserve-slots-per-step,convert-llm-to-func"],
)
def test_reserved_steps_give_the_same_results(passes: str) -> None:
    """Prefills and decode steps as reservations + per-layer writes: the
    example's outputs are bit-identical to the per-layer appends'."""
    program = (EXAMPLES / "decode.mlir").read_text()
    plain = run_function(program, *_decode_inputs(3))
    reserved = run_function(program, *_decode_inputs(3), passes=passes)
    for a, b in zip(plain, reserved, strict=True):
        np.testing.assert_array_equal(a, b)


def test_decode_example_matches_dense_reference() -> None:
    program = (EXAMPLES / "decode.mlir").read_text()
    paged = run_function(program, *_decode_inputs(2))
    dense = run_function(program, *_decode_inputs(2), create_cache=reference_caches())
    for got, want in zip(paged[:2], dense[:2], strict=True):
        # f16 storage: 1e-3 relative to the reference of the stored values.
        scale = np.abs(want).max()
        assert np.abs(got.astype(np.float64) - want).max() <= 1e-3 * scale
    np.testing.assert_array_equal(paged[2], dense[2])


def _shared_prefix_inputs(seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    shapes = [
        (1, 32, 2, 16),
        (1, 8, 2, 16),
        (3, 8, 2, 16),
        (4, 1, 2, 16),
        (2, 1, 2, 16),
    ]
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def test_shared_prefix_example_lowered_and_against_the_reference() -> None:
    """Matching, token ids, forks: bit-identical before and after lowering,
    and the values an unshared dense cache gives."""
    program = (EXAMPLES / "shared_prefix.mlir").read_text()
    direct = run_function(program, *_shared_prefix_inputs(1))
    lowered = run_function(
        program, *_shared_prefix_inputs(1), passes="convert-llm-to-func"
    )
    dense = run_function(
        program, *_shared_prefix_inputs(1), create_cache=reference_caches()
    )
    for a, b, want in zip(direct, lowered, dense, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
    assert direct[2].tolist() == [32, 32, 32]


SWAP_PROGRAM = """
!cache = !llm.paged_kv_cache<f16, 2, 2, 8, 4, 32>
func.func @main(%k : tensor<2x6x2x8xf32>, %q : tensor<2x1x4x8xf32>) -> tensor<2x1x4x8xf32> {
  %ids = arith.constant dense<[0, 1]> : tensor<2xi32>
  %first = arith.constant dense<[0]> : tensor<1xi32>
  %other = arith.constant dense<[5]> : tensor<1xi32>
  %c = llm.create_kv_cache {num_blocks = 6 : i64, swap_blocks = 4 : i64} : !cache
  %c1, %i1 = llm.append_kv %c, %k, %k, %ids
      : (!cache, tensor<2x6x2x8xf32>, tensor<2x6x2x8xf32>, tensor<2xi32>) -> (!cache, tensor<2x6xi32>)
  %c2 = llm.swap_out %c1, %first : (!cache, tensor<1xi32>) -> !cache
  %c3, %i3 = llm.append_kv %c2, %k, %k, %ids {layer = 1 : i32}
      : (!cache, tensor<2x6x2x8xf32>, tensor<2x6x2x8xf32>, tensor<2xi32>) -> (!cache, tensor<2x6xi32>)
  %c4 = llm.swap_in %c3, %first : (!cache, tensor<1xi32>) -> !cache
  %t, %l = llm.block_table %c4, %ids : (!cache, tensor<2xi32>) -> (tensor<2x8xi32>, tensor<2xi32>)
  %o = llm.paged_attention %q, %c4, %t, %l : (tensor<2x1x4x8xf32>, !cache, tensor<2x8xi32>, tensor<2xi32>) -> tensor<2x1x4x8xf32>
  func.return %o : tensor<2x1x4x8xf32>
}
"""


@pytest.mark.parametrize("passes", ["", "convert-llm-to-func"])
def test_swapping_in_ir(passes: str) -> None:
    """A swapped-out sequence rejects an append (the program's second one
    names it), and after swapping in attends as if it never left."""
    rng = np.random.default_rng(0)
    k = rng.standard_normal((2, 6, 2, 8)).astype(np.float32)
    q = rng.standard_normal((2, 1, 4, 8)).astype(np.float32)
    with pytest.raises(SequenceSwappedError, match="sequence 0 is swapped out"):
        run_function(SWAP_PROGRAM, k, q, passes=passes)
    program = SWAP_PROGRAM.replace(
        "%k, %k, %ids {layer = 1 : i32}", "%k, %k, %ids2 {layer = 1 : i32}"
    ).replace(
        "%c3, %i3 = llm.append_kv %c2",
        "%ids2 = arith.constant dense<[1, 5]> : tensor<2xi32>\n  %c3, %i3 = llm.append_kv %c2",
    )
    got = run_function(program, k, q, passes=passes)
    dense = run_function(program, k, q, create_cache=reference_caches())
    np.testing.assert_allclose(got[0], dense[0], rtol=1e-3, atol=1e-3)


FREE_PROGRAM = """
!cache = !llm.paged_kv_cache<f32, 1, 1, 4, 2, 16>
func.func @main(%k : tensor<2x3x1x4xf32>) -> (!cache, tensor<1x2xi32>, tensor<1xi32>) {
  %ids = arith.constant dense<[0, 1]> : tensor<2xi32>
  %first = arith.constant dense<0> : tensor<1xi32>
  %second = arith.constant dense<1> : tensor<1xi32>
  %c = llm.create_kv_cache {num_blocks = 8 : i64} : !cache
  %c1, %idx = llm.append_kv %c, %k, %k, %ids
      : (!cache, tensor<2x3x1x4xf32>, tensor<2x3x1x4xf32>, tensor<2xi32>)
      -> (!cache, tensor<2x3xi32>)
  %c2 = llm.free_sequence %c1, %first : (!cache, tensor<1xi32>) -> !cache
  %t, %l = llm.block_table %c2, %second
      : (!cache, tensor<1xi32>) -> (tensor<1x2xi32>, tensor<1xi32>)
  func.return %c2, %t, %l : !cache, tensor<1x2xi32>, tensor<1xi32>
}
"""


@pytest.mark.parametrize("passes", ["", "convert-llm-to-func"])
def test_free_sequence_and_dense_constants(passes: str) -> None:
    k = np.ones((2, 3, 1, 4), np.float32)
    cache, table, lens = run_function(FREE_PROGRAM, k, passes=passes)
    stats = cache.stats()
    # Sequence 0's two blocks went back to the pool; sequence 1 keeps two.
    assert (stats.blocks_used, stats.blocks_free, stats.num_sequences) == (2, 6, 1)
    assert lens.tolist() == [3]
    assert 0 not in cache and 1 in cache
    assert (table >= 0).all()


def test_runtime_errors_surface_with_their_message() -> None:
    program = OPS_PROGRAM.replace("ELEM", "f32").replace(
        "num_blocks = 16", "num_blocks = 3"
    )
    # The runtime's own exception propagates (xDSL adds the IR as a note).
    with pytest.raises(OutOfBlocksError, match="needs 4 new blocks, only 3 of 3"):
        run_function(program, *_inputs())


def test_block_table_wider_than_result_type_is_an_error() -> None:
    program = OPS_PROGRAM.replace("ELEM", "f32").replace("2x8xi32", "2x1xi32")
    with pytest.raises(BlockTableError, match=r"holds 2 blocks, .* has room for 1"):
        run_function(program, *_inputs())


@pytest.mark.parametrize("element", ["f32", "bf16"])
@pytest.mark.parametrize(
    "options",
    ["", ", causal = false", ", sliding_window = 3 : i32, logits_soft_cap = 0.7 : f32"],
)
def test_dense_reference_cache_agrees_with_paged_run(
    element: str, options: str
) -> None:
    # The --check backend is only useful if it is right: compare it with the
    # paged run on every attention option it implements.
    program = OPS_PROGRAM.replace("ELEM", element).replace(
        "scale = 0.25 : f32}", "scale = 0.25 : f32" + options + "}"
    )
    paged = run_function(program, *_inputs(5))
    dense = run_function(program, *_inputs(5), create_cache=reference_caches())
    np.testing.assert_allclose(paged[4], dense[4], rtol=0, atol=0)  # lookup
    np.testing.assert_allclose(paged[6], dense[6], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(paged[3], dense[3])  # lengths


def test_runs_from_a_checkout_without_the_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where llmir is not installed (a checkout on PYTHONPATH, as on a GPU
    machine), xdsl's multiverse lacks our universe; the runner adds it."""
    from xdsl.universe import Universe

    xdsl_only = Universe.get_multiverse()
    without_llm = Universe(
        all_dialects={k: v for k, v in xdsl_only.all_dialects.items() if k != "llm"},
        all_passes={k: v for k, v in xdsl_only.all_passes.items() if "llm" not in k},
    )
    monkeypatch.setattr(Universe, "get_multiverse", staticmethod(lambda: without_llm))
    program = (EXAMPLES / "decode.mlir").read_text()
    outputs = run_function(program, *_decode_inputs(2), passes="convert-llm-to-func")
    assert outputs[2].tolist() == [23, 19, 28]


HEAVY_HITTER_PROGRAM = """
!c = !llm.paged_kv_cache<f32, 1, 1, 4, 4, 64>
!ids = tensor<1xi32>
func.func @main(%x: tensor<1x12x1x4xf32>, %q: tensor<1x1x1x4xf32>,
                %x2: tensor<1x4x1x4xf32>, %q2: tensor<1x1x1x4xf32>) -> tensor<1x1x1x4xf32> {
  %kv = llm.create_kv_cache {num_blocks = 16 : i64, window_tokens = 4 : i64,
                             heavy_hitter_blocks = 3 : i64} : !c
  %ids = arith.constant dense<[0]> : !ids
  %kv1, %i1 = llm.append_kv %kv, %x, %x, %ids
      : (!c, tensor<1x12x1x4xf32>, tensor<1x12x1x4xf32>, !ids) -> (!c, tensor<1x12xi32>)
  %t, %l = llm.block_table %kv1, %ids : (!c, !ids) -> (tensor<1x?xi32>, !ids)
  %unused = llm.paged_attention %q, %kv1, %t, %l
      : (tensor<1x1x1x4xf32>, !c, tensor<1x?xi32>, !ids) -> tensor<1x1x1x4xf32>
  %kv2, %i2 = llm.append_kv %kv1, %x2, %x2, %ids
      : (!c, tensor<1x4x1x4xf32>, tensor<1x4x1x4xf32>, !ids) -> (!c, tensor<1x4xi32>)
  %t2, %l2 = llm.block_table %kv2, %ids : (!c, !ids) -> (tensor<1x?xi32>, !ids)
  %o = llm.paged_attention %q2, %kv2, %t2, %l2
      : (tensor<1x1x1x4xf32>, !c, tensor<1x?xi32>, !ids) -> tensor<1x1x1x4xf32>
  func.return %o : tensor<1x1x1x4xf32>
}
"""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_unused_attention_still_weighs_blocks_after_lowering(seed: int) -> None:
    # On a heavy-hitter cache, attention records the mass that decides which
    # blocks the next append gives back: the lowering must keep the call
    # even though its result is unused.
    rng = np.random.default_rng(seed)
    inputs = [
        rng.standard_normal(shape).astype(np.float32)
        for shape in ((1, 12, 1, 4), (1, 1, 1, 4), (1, 4, 1, 4), (1, 1, 1, 4))
    ]
    (direct,) = run_function(HEAVY_HITTER_PROGRAM, *inputs)
    (lowered,) = run_function(
        HEAVY_HITTER_PROGRAM, *inputs, passes="convert-llm-to-func"
    )
    np.testing.assert_array_equal(direct, lowered)


UNEVEN_STEP_PROGRAM = """
!c = !llm.paged_kv_cache<f32, 2, 1, 4, 4, 64>
!x = tensor<1x1x1x4xf32>
!ids = tensor<1xi32>
func.func @main(%x0: !x, %x: !x, %q: !x) -> !x {
  %kv = llm.create_kv_cache {num_blocks = 16 : i64} : !c
  %pre = arith.constant dense<[0]> : !ids
  %ids = arith.constant dense<[0]> : !ids
  // Layer 1 runs one token ahead; then one step: layer 0, attention, layer 1.
  %kv0, %i0 = llm.append_kv %kv, %x0, %x0, %pre {layer = 1 : i32} : (!c, !x, !x, !ids) -> (!c, tensor<1x1xi32>)
  %kv1, %i1 = llm.append_kv %kv0, %x, %x, %ids : (!c, !x, !x, !ids) -> (!c, tensor<1x1xi32>)
  %t, %l = llm.block_table %kv1, %ids : (!c, !ids) -> (tensor<1x?xi32>, !ids)
  %y = llm.paged_attention %q, %kv1, %t, %l : (!x, !c, tensor<1x?xi32>, !ids) -> !x
  %kv2, %i2 = llm.append_kv %kv1, %y, %y, %ids {layer = 1 : i32} : (!c, !x, !x, !ids) -> (!c, tensor<1x1xi32>)
  func.return %y : !x
}
"""


def test_a_reserved_step_refuses_layers_that_are_not_level() -> None:
    # The step's table read is replaced by the reservation's, which is the
    # one layer 0 reads only when the layers start level: a half-appended
    # sequence is refused at run time instead of read wrongly.
    inputs = [np.ones((1, 1, 1, 4), np.float32)] * 3
    run_function(UNEVEN_STEP_PROGRAM, *inputs)  # fine as written
    with pytest.raises(SequenceError, match="sequence 0 has a step half-appended"):
        run_function(UNEVEN_STEP_PROGRAM, *inputs, passes="llm-reserve-slots-per-step")
