"""`PagedKVCache(..., device="cuda")`: the same bookkeeping as on the CPU, the
pool on the device.  Given the same appends, CPU and CUDA caches agree."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import KINDS, assert_close

from llmir.errors import BlockTableError, SequenceTooLongError
from llmir.runtime import PagedKVCache
from llmir.runtime import cuda as kvcuda
from llmir.runtime.attention import paged_attention as cpu_paged_attention

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
    assert isinstance(gpu.storage, kvcuda.CudaKVStorage)
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
    want = cpu_paged_attention(query, cpu, table, lens, layer=1)
    got = kvcuda.paged_attention(query, gpu, table, lens, layer=1)
    assert_close(got, want, gpu.kind)
    decode_q = query[:, :1]
    want = cpu_paged_attention(decode_q, cpu, table, lens, layer=0)
    got = kvcuda.paged_attention(decode_q, gpu, table, lens, layer=0, num_splits=2)
    assert_close(got, want, gpu.kind)


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
        kvcuda.paged_attention(query, gpu, table, lens)
    assert (gpu.snapshot(), gpu.kv_pool.copy_to_host().tobytes()) == before
