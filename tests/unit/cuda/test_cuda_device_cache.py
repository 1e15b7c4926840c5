"""`PagedKVCache(..., device="cuda")`: the same bookkeeping as on the CPU, the
pool on the device.  Given the same appends, CPU and CUDA caches agree."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import KINDS, assert_close

from llmir import PagedKVCache, paged_attention
from llmir.errors import (
    BlockTableError,
    ConfigError,
    DTypeError,
    SequenceTooLongError,
    ShapeError,
)
from llmir.runtime import cuda as kvcuda
from llmir.testing.reference import reference_paged_attention

LAYERS, HEADS, D, B, MAX_LEN = 2, 2, 8, 4, 16


def _caches(kind_name: str) -> tuple[PagedKVCache, PagedKVCache]:
    def make(device: str) -> PagedKVCache:
        return PagedKVCache(
            LAYERS, HEADS, D, B, MAX_LEN, kind_name, num_blocks=10, device=device
        )

    return make("cpu"), make("cuda")


def _same_appends(caches: tuple[PagedKVCache, ...], rng: np.random.Generator) -> None:
    # A prefill of two sequences on every layer at once, then a decode step
    # layer by layer, then a third sequence joining.
    keys = rng.standard_normal((LAYERS, 2, 5, HEADS, D)).astype(np.float32)
    values = rng.standard_normal((LAYERS, 2, 5, HEADS, D)).astype(np.float32)
    step = rng.standard_normal((2, 2, 1, HEADS, D)).astype(np.float32)
    late = rng.standard_normal((LAYERS, 1, 3, HEADS, D)).astype(np.float32)
    for cache in caches:
        cache.append_kv_all_layers(keys, values, [7, 9])
        for layer in range(LAYERS):
            cache.append_kv(step[0], step[1], [7, 9], layer=layer)
        cache.append_kv_all_layers(late, late, [3])


@pytest.mark.parametrize("kind_name", KINDS)
def test_lookup_agrees_with_cpu_cache(kind_name: str, rng: np.random.Generator) -> None:
    cpu, gpu = _caches(kind_name)
    assert isinstance(gpu.backend, kvcuda.CUDABackend)
    _same_appends((cpu, gpu), rng)
    assert gpu.snapshot() == cpu.snapshot()
    np.testing.assert_array_equal(gpu.kv_pool.copy_to_host(), cpu.kv_pool)
    for layer in range(LAYERS):
        for as_float32 in (False, True):
            want = cpu.lookup_sequences([9, 3, 7], layer, as_float32=as_float32)
            got = gpu.lookup_sequences([9, 3, 7], layer, as_float32=as_float32)
            for w, g in zip(want, got, strict=True):
                assert g.dtype == w.dtype
                np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("kind_name", KINDS)
def test_attention_agrees_with_cpu_cache(
    kind_name: str, rng: np.random.Generator
) -> None:
    cpu, gpu = _caches(kind_name)
    _same_appends((cpu, gpu), rng)
    table, lens = cpu.block_table([7, 9, 3])
    query = rng.standard_normal((3, 2, 4, D)).astype(np.float32)  # GQA 4/2, Tq 2
    want = paged_attention(query, cpu, table, lens, layer=1)
    got = paged_attention(query, gpu, table, lens, layer=1)
    assert_close(got, want, gpu.element_type)
    decode_q = query[:, :1]
    options = {"sliding_window": 3, "logits_soft_cap": 2.0, "scale": 0.4}
    want = paged_attention(decode_q, cpu, table, lens, layer=0, **options)
    got = paged_attention(decode_q, gpu, table, lens, layer=0, **options)
    assert_close(got, want, gpu.element_type)


def test_readme_snippet_runs_unchanged_on_a_cuda_cache() -> None:
    """The README's Python example, with only device="cuda" added."""
    cache = PagedKVCache(num_layers=2, num_heads=8, head_dim=64, block_size=16,
                         max_seq_len=4096, dtype="f16", num_blocks=256,
                         device="cuda")  # fmt: skip
    k = np.random.randn(2, 5, 8, 64).astype(np.float32)  # [batch, T, H, D]
    cache.append_kv(k, k, seq_ids=[0, 1], layer=0)
    table, lens = cache.block_table([0, 1])  # int32, -1 padded
    q = np.random.randn(2, 1, 32, 64).astype(np.float32)  # GQA: 32 query heads
    out = paged_attention(q, cache, table, lens, layer=0)  # [2, 1, 32, 64]
    assert out.shape == (2, 1, 32, 64) and out.dtype == np.float32
    assert cache.stats().blocks_used == 2


def test_device_arrays_are_used_in_place(rng: np.random.Generator) -> None:
    """Inputs already on the GPU (anything with __cuda_array_interface__)
    need no host round trip; a device query gives a device result."""
    cpu, gpu = _caches("f32")
    keys = rng.standard_normal((2, 5, HEADS, D)).astype(np.float32)
    cpu.append_kv(keys, keys, [1, 2])
    gpu.append_kv(kvcuda.cuda_module().to_device(keys), keys, [1, 2])
    table, lens = gpu.block_table([1, 2])
    query = rng.standard_normal((2, 1, 4, D)).astype(np.float32)
    got = paged_attention(kvcuda.cuda_module().to_device(query), gpu, table, lens)
    assert hasattr(got, "copy_to_host")
    want = paged_attention(query, cpu, table, lens)
    assert_close(got.copy_to_host(), want, gpu.element_type)


def test_the_cache_boundary_checks_every_argument(rng: np.random.Generator) -> None:
    _, gpu = _caches("f32")
    gpu.append_kv_all_layers(
        *(rng.standard_normal((LAYERS, 2, 6, HEADS, D)).astype(np.float32),) * 2,
        [0, 1],
    )
    table, lens = gpu.block_table([0, 1])
    query = rng.standard_normal((2, 1, 4, D)).astype(np.float32)
    bad = table.copy()
    bad[1, 0] = 10
    with pytest.raises(BlockTableError, match=r"block_table\[1, 0\] = 10 is out"):
        paged_attention(query, gpu, bad, lens)
    with pytest.raises(BlockTableError, match=r"seq_lens\[1\] = 100 exceeds"):
        paged_attention(query, gpu, table, np.array([6, 100]))
    with pytest.raises(ShapeError, match="not a positive multiple"):
        paged_attention(query[:, :, :3], gpu, table, lens)
    with pytest.raises(DTypeError, match="float64"):
        paged_attention(query.astype(np.float64), gpu, table, lens)
    with pytest.raises(ConfigError, match="sliding_window"):
        paged_attention(query, gpu, table, lens, sliding_window=0)
    with pytest.raises(ShapeError, match="layer 2 is out of range"):
        paged_attention(query, gpu, table, lens, layer=2)


def test_rejected_calls_change_nothing(rng: np.random.Generator) -> None:
    _, gpu = _caches("f16")
    _same_appends((gpu,), rng)
    before = gpu.snapshot(), gpu.kv_pool.copy_to_host().tobytes()
    too_many = rng.standard_normal((1, MAX_LEN, HEADS, D)).astype(np.float32)
    with pytest.raises(SequenceTooLongError):
        gpu.append_kv(too_many, too_many, [7], layer=0)
    table, lens = gpu.block_table([7])
    table[0, 0] = 10
    with pytest.raises(
        BlockTableError, match=r"= 10 is out of range, the pool has 10 blocks"
    ):
        gpu.lookup_kv(table, lens)
    query = np.zeros((1, 1, HEADS, D), np.float32)
    with pytest.raises(BlockTableError, match=r"= 10 is out of range"):
        paged_attention(query, gpu, table, lens)
    assert (gpu.snapshot(), gpu.kv_pool.copy_to_host().tobytes()) == before


def test_a_pruned_cuda_cache_matches_one_that_never_pruned(
    rng: np.random.Generator,
) -> None:
    """Sinks + window pruning on the device: attention bit-identical to an
    unpruned CUDA cache with the same mask, in a pool the unpruned one
    outgrows."""
    pruned = PagedKVCache(
        1, 2, 8, 4, 256, device="cuda", num_blocks=8, window_tokens=9,
        sink_tokens=2,
    )  # fmt: skip
    plain = PagedKVCache(1, 2, 8, 4, 256, device="cuda", num_blocks=16)
    for t in (7, 1, 1, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1):
        kv = rng.standard_normal((1, t, 2, 8)).astype(np.float32)
        query = rng.standard_normal((1, t, 4, 8)).astype(np.float32)
        outputs = []
        for cache in (pruned, plain):
            cache.append_kv(kv, -kv, [0])
            table, lens = cache.block_table([0])
            outputs.append(
                cache.paged_attention(
                    query, table, lens, sliding_window=9, sink_tokens=2
                )
            )
        np.testing.assert_array_equal(outputs[0], outputs[1])
    assert pruned.stats().blocks_pruned > 0
    assert pruned.stats().blocks_used <= 1 + 3 + 1
    pruned.check_invariants()


def test_heavy_hitter_pruning_on_the_device(rng: np.random.Generator) -> None:
    """The device attention reports block masses and skips the holes they
    leave: the budget holds and outputs match the float64 reference over
    the kept tokens."""
    cache = PagedKVCache(
        1, 2, 8, 4, 256, device="cuda", num_blocks=10, window_tokens=8,
        sink_tokens=2, heavy_hitter_blocks=6,
    )  # fmt: skip
    for t in (9, 1, 1, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1):
        kv = rng.standard_normal((1, t, 2, 8)).astype(np.float32)
        cache.append_kv(kv, -kv, [0])
        query = rng.standard_normal((1, t, 4, 8)).astype(np.float32)
        table, lens = cache.block_table([0])
        got = cache.paged_attention(query, table, lens)
        pool = cache.kv_pool
        host = pool.copy_to_host() if hasattr(pool, "copy_to_host") else pool
        want = reference_paged_attention(
            query, host[0], cache.element_type, table, lens
        )
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert int((cache.blocks_of(0) >= 0).sum()) <= max(6, 1 + 3 + 1 + (t > 1))
    assert cache.stats().blocks_pruned > 0
    cache.check_invariants()
