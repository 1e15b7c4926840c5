"""The `KVCache` protocol on the CUDA backend: the same trace of every
operation as on the CPU backend gives the same results."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import KINDS, TOLERANCE

from llmir import KVCache, PagedKVCache
from llmir.testing.conformance import (
    BLOCK,
    HEAD_DIM,
    HEADS,
    LAYERS,
    protocol_trace,
    sharing_trace,
)


@pytest.mark.parametrize("kind_name", KINDS)
def test_cuda_cache_agrees_with_cpu_cache(kind_name: str) -> None:
    results = []
    for device in ("cpu", "cuda"):
        cache = PagedKVCache(
            LAYERS, HEADS, HEAD_DIM, BLOCK, 32, kind_name, num_blocks=24, device=device
        )
        assert isinstance(cache, KVCache) and cache.device == device
        results.append(protocol_trace(cache, np.random.default_rng(5)))
    cpu, gpu = results
    tol = TOLERANCE[kind_name]
    assert cpu.keys() == gpu.keys()
    for name, want in cpu.items():
        got = gpu[name]
        if name.startswith("lookup"):
            # The stored values: bit for bit.
            for g, w in zip(got, want, strict=True):
                assert g.dtype == w.dtype
                np.testing.assert_array_equal(g, w)
        elif isinstance(want, np.ndarray):
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)
        else:
            assert got == want, name


@pytest.mark.parametrize("kind_name", KINDS)
def test_cuda_sharing_agrees_with_cpu(kind_name: str) -> None:
    """Copy-on-write and partial-block copies run the CUDA copy kernel:
    the stored values equal the CPU backend's bit for bit."""
    results = []
    for device in ("cpu", "cuda"):
        cache = PagedKVCache(
            LAYERS,
            HEADS,
            HEAD_DIM,
            BLOCK,
            32,
            kind_name,
            num_blocks=24,
            device=device,
            enable_prefix_caching=True,
        )
        results.append(sharing_trace(cache))
        cache.check_invariants()
    cpu, gpu = results
    assert cpu.keys() == gpu.keys()
    for name, want in cpu.items():
        if name.endswith(".lookup"):
            np.testing.assert_array_equal(gpu[name], want, err_msg=name)
        elif isinstance(want, np.ndarray):
            tol = TOLERANCE[kind_name]
            np.testing.assert_allclose(gpu[name], want, rtol=tol, atol=tol)
        else:
            assert gpu[name] == want, name


def test_cuda_copy_blocks_whole_and_partial() -> None:
    """The copy kernel alone: whole blocks, and the first k slots only."""
    cache = PagedKVCache(2, 2, 8, 4, 32, "f16", num_blocks=6, device="cuda")
    pool = np.random.default_rng(0).integers(0, 1 << 15, (2, 6, 2, 2, 4, 8))
    backend = cache.backend
    cache.kv_pool.copy_to_device(pool.astype(np.uint16))
    backend.copy_blocks(np.array([0, 3], np.int32), np.array([5, 1], np.int32), None)
    want = pool.copy()
    want[:, [5, 1]] = pool[:, [0, 3]]
    backend.copy_blocks(np.array([2], np.int32), np.array([4], np.int32), 3)
    want[:, 4, :, :, :3] = pool[:, 2, :, :, :3]
    np.testing.assert_array_equal(cache.kv_pool.copy_to_host(), want)


def test_cuda_reserved_step_stores_what_appends_store() -> None:
    """reserve_slots + write_kv on the CUDA backend: the same bytes as
    per-layer appends on the CPU."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((LAYERS, 2, 3, HEADS, HEAD_DIM), np.float32)
    cpu = PagedKVCache(LAYERS, HEADS, HEAD_DIM, BLOCK, 32, "bf16", num_blocks=8)
    gpu = PagedKVCache(
        LAYERS, HEADS, HEAD_DIM, BLOCK, 32, "bf16", num_blocks=8, device="cuda"
    )
    slots, _, _ = gpu.reserve_slots([0, 1], 3)
    for layer in range(LAYERS):
        cpu.append_kv(x[layer], -x[layer], [0, 1], layer)
        gpu.write_kv(x[layer], -x[layer], slots, layer)
    for layer in range(LAYERS):
        want = cpu.lookup_sequences([0, 1], layer)
        got = gpu.lookup_sequences([0, 1], layer)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_cuda_swap_round_trip() -> None:
    """Swapping out to host memory and back through the CUDA gather/scatter
    kernels keeps every stored element."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((LAYERS, 2, 6, HEADS, HEAD_DIM), np.float32)
    gpu = PagedKVCache(
        LAYERS,
        HEADS,
        HEAD_DIM,
        BLOCK,
        32,
        "f16",
        num_blocks=8,
        device="cuda",
        swap_blocks=4,
    )
    gpu.append_kv_all_layers(x, -x, [0, 1])
    before = [gpu.lookup_sequences([0], layer) for layer in range(LAYERS)]
    gpu.swap_out([0])
    gpu.append_kv_all_layers(x[:, :1], x[:, :1], [5])  # reuse the freed blocks
    gpu.swap_in([0])
    for layer in range(LAYERS):
        got = gpu.lookup_sequences([0], layer)
        np.testing.assert_array_equal(got[0], before[layer][0])
        np.testing.assert_array_equal(got[1], before[layer][1])
    gpu.check_invariants()
