"""Quantized caches (``i8``, ``i4``) on the CUDA backend: the same bytes as
the CPU backend for the same appends (scales, requantised codes and all),
lookups that decode them the same, and attention over them against float64."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llmir import PagedKVCache, paged_attention
from llmir.runtime.cuda.loader import cuda_module
from llmir.runtime.cuda.quant_kernels import f16_conversions
from llmir.testing.reference import reference_paged_attention

cuda = cuda_module()  # a global so named: the simulator swaps it in kernels

QUANTIZED = ("i8", "i4")
LAYERS, HEADS, D, B = 2, 2, 32, 4  # i4 needs head_dim % 32 == 0


def _caches(kind: str, **options: Any) -> tuple[PagedKVCache, PagedKVCache]:
    def make(device: str) -> PagedKVCache:
        return PagedKVCache(
            LAYERS, HEADS, D, B, 64, kind, num_blocks=24, device=device, **options
        )

    return make("cpu"), make("cuda")


def _same_appends(caches: tuple[PagedKVCache, ...], rng: np.random.Generator) -> None:
    """Every path of the quantise kernel: a ragged prefill of all layers
    (runs that start and end mid-block), decode steps layer by layer whose
    outliers widen the scales of partly filled blocks (requantising their
    earlier codes), a multi-token append into a partial block, float16
    inputs, and a sequence joining late."""
    prefill = rng.standard_normal((LAYERS, 2, 6, HEADS, D)).astype(np.float32)
    for cache in caches:
        cache.append_kv_all_layers(prefill, prefill[::-1], [7, 9])
    for step in range(3):
        k = rng.standard_normal((2, 1, HEADS, D)).astype(np.float32)
        k[:, :, :, step] *= 20  # an outlier channel, new each step
        v = (rng.standard_normal((2, 1, HEADS, D)) * (1 + step)).astype(np.float32)
        for cache in caches:
            for layer in range(LAYERS):
                cache.append_kv(k, v, [7, 9], layer=layer)
    chunk = (3 * rng.standard_normal((1, 5, HEADS, D))).astype(np.float16)
    late = rng.standard_normal((LAYERS, 1, 3, HEADS, D)).astype(np.float32)
    for cache in caches:
        for layer in range(LAYERS):
            cache.append_kv(chunk, -chunk, [9], layer=layer)
        cache.append_kv_all_layers(late, late, [3])


def _pool(cache: PagedKVCache) -> np.ndarray[Any, Any]:
    pool = cache.kv_pool
    return pool.copy_to_host() if hasattr(pool, "copy_to_host") else pool


def test_float16_conversions_match_numpy() -> None:
    """The kernels' integer-only float16 codecs: every half decodes exactly,
    and float32s (ties, subnormals, overflow, NaN) round to nearest even."""
    f16_to_f32, f32_to_f16 = f16_conversions()

    @cuda.jit
    def convert(halves: Any, decoded: Any, floats: Any, encoded: Any) -> None:
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, halves.shape[0], stride):
            decoded[i] = f16_to_f32(halves[i])
        for i in range(start, floats.shape[0], stride):
            encoded[i] = f32_to_f16(floats[i])

    rng = np.random.default_rng(0)
    halves = np.arange(1 << 16, dtype=np.int32)
    edges = np.array(
        [0.0, -0.0, 2.0**-25, 2.0**-25 * 1.0001, 3 * 2.0**-26, 2.0**-14,
         65504.0, 65519.99, 65520.0, 1e9, np.inf, -np.inf, np.nan, 1.0 + 2.0**-11,
         1.0 + 3 * 2.0**-11],
        np.float32,
    )  # fmt: skip
    floats = np.concatenate(
        [
            edges,
            -edges,
            rng.integers(0, 1 << 32, 20000, dtype=np.uint64)
            .astype(np.uint32)
            .view(np.float32),
            (rng.standard_normal(20000) * 10.0 ** rng.integers(-9, 5, 20000)).astype(
                np.float32
            ),
        ]
    )
    decoded = np.empty(halves.shape, np.float32)
    encoded = np.empty(floats.shape, np.int32)
    convert[4, 32](halves, decoded, floats, encoded)
    want = halves.astype(np.uint16).view(np.float16).astype(np.float32)
    nan_half = np.isnan(want)
    np.testing.assert_array_equal(
        decoded.view(np.uint32)[~nan_half], want.view(np.uint32)[~nan_half]
    )
    assert np.isnan(decoded[nan_half]).all()
    with np.errstate(over="ignore"):
        want_bits = floats.astype(np.float16).view(np.uint16)
    nan = np.isnan(floats)
    np.testing.assert_array_equal(encoded[~nan], want_bits[~nan])
    assert np.all((encoded[nan] & 0x7E00) == 0x7E00)


@pytest.mark.parametrize("kind", QUANTIZED)
def test_cuda_stores_the_cpu_bytes(kind: str) -> None:
    cpu, gpu = _caches(kind)
    _same_appends((cpu, gpu), np.random.default_rng(1))
    assert gpu.snapshot() == cpu.snapshot()
    np.testing.assert_array_equal(_pool(gpu), cpu.kv_pool)
    for layer in range(LAYERS):
        for as_float32 in (False, True):
            want = cpu.lookup_sequences([9, 3, 7], layer, as_float32=as_float32)
            got = gpu.lookup_sequences([9, 3, 7], layer, as_float32=as_float32)
            for w, g in zip(want, got, strict=True):
                assert g.dtype == w.dtype
                # Decoding is ``code * scale + offset``: a GPU may fuse it.
                np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


CASES = [
    ("decode GQA", 4, 1, {}),
    ("prefill causal", 2, 3, {}),
    ("window, sinks, soft cap", 4, 1, {"sliding_window": 5, "sink_tokens": 2,
                                       "logits_soft_cap": 3.0, "scale": 0.4}),
]  # fmt: skip


@pytest.mark.parametrize("kind", QUANTIZED)
@pytest.mark.parametrize(("name", "hq", "tq", "options"), CASES)
def test_attention_matches_float64_over_the_stored_values(
    kind: str, name: str, hq: int, tq: int, options: dict[str, Any]
) -> None:
    cpu, gpu = _caches(kind)
    _same_appends((cpu, gpu), np.random.default_rng(2))
    table, lens = gpu.block_table([7, 9, 3])
    query = np.random.default_rng(3).standard_normal((3, tq, hq, D)).astype(np.float32)
    got = paged_attention(query, gpu, table, lens, layer=1, **options)
    ref = reference_paged_attention(
        query, _pool(gpu)[1], gpu.element_type, table, lens, **options
    )
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("kind", QUANTIZED)
def test_fork_and_swap_move_whole_quantized_blocks(kind: str, tmp_path: Any) -> None:
    """Copy-on-write copies a quantized block whole (its key scales are
    spread over every row), and swapping restores the bytes: on the device
    as on the host."""
    caches = _caches(kind, swap_blocks=8, swap_dir=str(tmp_path))
    rng = np.random.default_rng(4)
    keys = rng.standard_normal((LAYERS, 1, 6, HEADS, D)).astype(np.float32)
    wide = (10 * rng.standard_normal((1, 1, HEADS, D))).astype(np.float32)
    for cache in caches:
        cache.append_kv_all_layers(keys, keys, [0])
        cache.fork(0, 1)
        cache.append_kv(wide, wide, [1], layer=0)  # widens the shared block's
        cache.append_kv(wide, wide, [1], layer=1)  # scales: the child copies it
    cpu, gpu = caches
    np.testing.assert_array_equal(_pool(gpu), cpu.kv_pool)
    parent, _ = gpu.lookup_sequences([0], as_float32=True)
    np.testing.assert_array_equal(parent, cpu.lookup_sequences([0], as_float32=True)[0])
    snapshot = _pool(gpu)[:, gpu.blocks_of(1)].copy()
    gpu.swap_out([1])
    gpu.swap_in([1])
    np.testing.assert_array_equal(_pool(gpu)[:, gpu.blocks_of(1)], snapshot)
