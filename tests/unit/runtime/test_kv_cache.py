"""PagedKVCache: append, lookup, layers, dtypes, stats, free and reset,
checked against plain numpy references."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llmir.errors import (
    ConfigError,
    DeviceError,
    DTypeError,
    ShapeError,
    UnknownSequenceError,
)
from llmir.runtime import Backend, CacheStats, PagedKVCache
from llmir.runtime.cpu import copy_kernels
from llmir.runtime.dtypes import decode, element_type, encode
from llmir.runtime.geometry import KEY, VALUE

L, H, D, B = 3, 2, 8, 4


def make_cache(
    dtype: str = "f32", num_blocks: int = 32, max_seq_len: int = 40
) -> PagedKVCache:
    return PagedKVCache(L, H, D, B, max_seq_len, dtype, num_blocks=num_blocks)


def rand(*shape: int, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def reference_lookup(
    cache: PagedKVCache, table: Any, lens: Any, layer: int
) -> tuple[Any, Any]:
    """Plain numpy gather through the layout rules, decoded to float32."""
    pool = decode(np.asarray(cache.kv_pool), cache.element_type)
    max_len = int(max(lens, default=0))
    keys = np.zeros((len(lens), max_len, H, D), np.float32)
    values = np.zeros_like(keys)
    for b, n in enumerate(lens):
        for p in range(n):
            blk = table[b][p // B]
            keys[b, p] = pool[layer, blk, :, KEY, p % B]
            values[b, p] = pool[layer, blk, :, VALUE, p % B]
    return keys, values


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_append_then_lookup_round_trips(dtype: str) -> None:
    cache = make_cache(dtype)
    kind = element_type(dtype)
    k1, v1 = rand(2, 5, H, D, seed=1), rand(2, 5, H, D, seed=2)
    k2, v2 = rand(2, 3, H, D, seed=3), rand(2, 3, H, D, seed=4)
    cache.append_kv(k1, v1, [10, 11], layer=1)
    blocks = cache.append_kv(k2, v2, [10, 11], layer=1)
    assert blocks.shape == (2, 3) and blocks.dtype == np.int32
    table, lens = cache.block_table([10, 11])
    assert lens.tolist() == [8, 8]
    # The returned blocks are the table's entries of the appended positions.
    assert np.array_equal(blocks, table[:, [5 // B, 6 // B, 7 // B]])
    keys, values = cache.lookup_kv(table, lens, layer=1, as_float32=True)
    want_k = decode(encode(np.concatenate([k1, k2], 1), kind), kind)
    want_v = decode(encode(np.concatenate([v1, v2], 1), kind), kind)
    assert np.array_equal(keys, want_k) and np.array_equal(values, want_v)
    ref_k, ref_v = reference_lookup(cache, table, lens, 1)
    assert np.array_equal(keys, ref_k) and np.array_equal(values, ref_v)
    # Relative error of the stored values within the type's precision.
    tol = 1e-5 if dtype == "f32" else 1e-2
    np.testing.assert_allclose(keys, np.concatenate([k1, k2], 1), rtol=tol, atol=tol)


@pytest.mark.parametrize(
    ("dtype", "out_dtype"),
    [("f32", np.float32), ("f16", np.float16), ("bf16", np.float32)],
)
def test_lookup_dtype_is_exact_representation(dtype: str, out_dtype: Any) -> None:
    cache = make_cache(dtype)
    k = rand(1, 3, H, D)
    cache.append_kv(k, k, [0])
    keys, _ = cache.lookup_kv(*cache.block_table([0]))
    assert keys.dtype == out_dtype
    kind = element_type(dtype)
    assert np.array_equal(keys.astype(np.float32), decode(encode(k, kind), kind))


def test_storage_dtype_inputs_are_copied_bit_for_bit() -> None:
    k = rand(1, 2, H, D)
    f16 = make_cache("f16")
    f16.append_kv(k.astype(np.float16), k.astype(np.float16), [0])
    keys, _ = f16.lookup_kv(*f16.block_table([0]))
    assert np.array_equal(keys, k.astype(np.float16))
    bits = k.astype(np.float16).view(np.uint16)
    f16.append_kv(bits, bits, [1])
    assert np.array_equal(f16.lookup_kv(*f16.block_table([1]))[0], k.astype(np.float16))
    bf16 = make_cache("bf16")
    bf_bits = encode(k, bf16.element_type)
    bf16.append_kv(bf_bits, bf_bits, [0])
    keys, _ = bf16.lookup_kv(*bf16.block_table([0]))
    assert np.array_equal(keys, decode(bf_bits, bf16.element_type))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_nan_and_inf_are_stored_as_given(dtype: str) -> None:
    cache = make_cache(dtype)
    k = rand(1, 1, H, D)
    k[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    cache.append_kv(k, k, [0])
    keys, _ = cache.lookup_kv(*cache.block_table([0]), as_float32=True)
    assert np.isnan(keys[0, 0, 0, 0])
    assert keys[0, 0, 0, 1] == np.inf and keys[0, 0, 0, 2] == -np.inf


def test_layers_appended_in_turn_share_positions_and_blocks() -> None:
    cache = make_cache()
    steps = [rand(2, t, H, D, seed=t) for t in (6, 1, 1, 3)]
    for step in steps:
        per_layer_blocks = [
            cache.append_kv(step + layer, step - layer, [4, 9], layer=layer)
            for layer in range(L)
        ]
        for blocks in per_layer_blocks[1:]:
            assert np.array_equal(blocks, per_layer_blocks[0])
    table, lens = cache.block_table([4, 9])
    assert lens.tolist() == [11, 11] and cache.seq_len(4) == 11
    assert cache.layer_lens(4).tolist() == [11] * L
    everything = np.concatenate(steps, axis=1)
    for layer in range(L):
        keys, values = cache.lookup_kv(table, lens, layer)
        assert np.array_equal(keys, everything + layer)
        assert np.array_equal(values, everything - layer)


def test_half_appended_step_counts_tokens_once() -> None:
    cache = make_cache()
    k = rand(1, 2, H, D)
    cache.append_kv(k, k, [0], layer=0)
    assert cache.seq_len(0) == 2 and cache.layer_lens(0).tolist() == [2, 0, 0]
    # A lagging layer fills in behind without growing the sequence.
    cache.append_kv(k, k, [0], layer=2)
    assert cache.seq_len(0) == 2 and cache.stats().tokens_stored == 2


def test_all_layers_form_matches_per_layer_appends() -> None:
    one, per = make_cache("bf16"), make_cache("bf16")
    for t in (5, 1, 4):
        k, v = rand(L, 3, t, H, D, seed=t), rand(L, 3, t, H, D, seed=t + 50)
        got = one.append_kv_all_layers(k, v, [1, 2, 3])
        for layer in range(L):
            want = per.append_kv(k[layer], v[layer], [1, 2, 3], layer=layer)
            assert np.array_equal(got, want)
    assert np.array_equal(one.kv_pool, per.kv_pool)
    assert one.snapshot() == per.snapshot()


def test_variable_lengths_across_the_batch() -> None:
    cache = make_cache()
    cache.append_kv(rand(1, 7, H, D), rand(1, 7, H, D), [0])
    k, v = rand(3, 2, H, D, seed=5), rand(3, 2, H, D, seed=6)
    cache.append_kv(k, v, [0, 1, 2])
    table, lens = cache.block_table([0, 1, 2])
    assert lens.tolist() == [9, 2, 2]
    assert table.shape == (3, 3) and (table[1:, 1:] == -1).all()
    keys, values = cache.lookup_kv(table, lens)
    ref_k, ref_v = reference_lookup(cache, table, lens, 0)
    assert np.array_equal(keys, ref_k) and np.array_equal(values, ref_v)
    assert (keys[1, 2:] == 0).all()  # zero padding past the end


@pytest.mark.parametrize("threshold", [0, 1 << 62], ids=["prange", "serial"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_serial_and_parallel_kernels_agree(
    monkeypatch: pytest.MonkeyPatch, threshold: int, dtype: str
) -> None:
    monkeypatch.setattr(copy_kernels, "PARALLEL_MIN_ELEMENTS", threshold)
    cache = make_cache(dtype, num_blocks=40)
    ids = [3, 1, 2]
    k, v = rand(L, 3, 7, H, D, seed=8), rand(L, 3, 7, H, D, seed=9)
    cache.append_kv_all_layers(k, v, ids)
    cache.append_kv(k[0, :, :2], v[0, :, :2], ids, layer=0)
    table, lens = cache.block_table(ids)
    kind = cache.element_type
    for layer in range(L):
        keys, values = cache.lookup_kv(table, lens, layer, as_float32=True)
        ref_k, ref_v = reference_lookup(cache, table, lens, layer)
        assert np.array_equal(keys, ref_k) and np.array_equal(values, ref_v)
        assert np.array_equal(keys[:, :7], decode(encode(k[layer], kind), kind))


def test_stats_and_fragmentation() -> None:
    cache = make_cache("f16", num_blocks=10)
    assert cache.stats() == CacheStats(10, 0, 10, 0, 0, cache.kv_pool.nbytes, 0, 0, 0)
    cache.append_kv(rand(2, 5, H, D), rand(2, 5, H, D), [0, 1])
    s = cache.stats()
    block_bytes = L * H * 2 * B * D * 2
    assert (s.blocks_used, s.blocks_free, s.num_sequences, s.tokens_stored) == (
        4,
        6,
        2,
        10,
    )
    assert s.pool_bytes == 10 * block_bytes and s.bytes_used == 4 * block_bytes
    assert s.fragmentation_slots == 2 * (2 * B - 5)
    assert s.fragmentation == pytest.approx(6 / 16)


def test_free_sequence_and_reset() -> None:
    cache = make_cache(num_blocks=6)
    k = rand(2, 9, H, D)
    cache.append_kv(k, k, [0, 1])
    assert 0 in cache and len(cache) == 2
    cache.free_sequence(0)
    assert 0 not in cache and cache.stats().blocks_used == 3
    with pytest.raises(UnknownSequenceError, match="unknown sequence id 0"):
        cache.free_sequence(0)
    # Freed blocks are reused by a new sequence.
    cache.append_kv(k[:1], k[:1], [5])
    assert cache.stats().blocks_free == 0
    cache.reset()
    assert len(cache) == 0 and cache.stats().blocks_free == 6
    assert cache.snapshot() == make_cache(num_blocks=6).snapshot()


def test_pool_layout_and_attributes() -> None:
    cache = make_cache("bf16", num_blocks=7)
    assert (
        cache.kv_pool.shape == (L, 7, H, 2, B, D) and cache.kv_pool.dtype == np.uint16
    )
    assert (cache.num_layers, cache.num_heads, cache.head_dim) == (L, H, D)
    assert (cache.block_size, cache.max_seq_len, cache.num_blocks) == (B, 40, 7)
    assert isinstance(cache.backend, Backend)
    pool = cache.kv_pool
    cache.append_kv(rand(1, 3, H, D), rand(1, 3, H, D), [0])
    assert cache.kv_pool is pool  # allocated once


def test_sizing_by_memory_budget() -> None:
    # A block's K/V plus the allocator's 12 bytes of bookkeeping per block.
    block_bytes = L * H * 2 * B * D * 4 + 12
    cache = PagedKVCache(L, H, D, B, 40, memory_budget_bytes=5 * block_bytes + 7)
    assert cache.num_blocks == 5
    assert PagedKVCache(L, H, D, B, 40).num_blocks == 10  # one max_seq_len sequence
    with pytest.raises(ConfigError, match="less than one block"):
        PagedKVCache(L, H, D, B, 40, memory_budget_bytes=block_bytes - 1)
    with pytest.raises(ConfigError, match="not both"):
        PagedKVCache(L, H, D, B, 40, num_blocks=3, memory_budget_bytes=block_bytes)
    with pytest.raises(
        ConfigError, match=r"head_dim must be in \[1, 2147483647\], got 0"
    ):
        PagedKVCache(L, H, 0, B, 40)


def test_devices() -> None:
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        PagedKVCache(L, H, D, B, 40, device="tpu")
    # Without a GPU (or without the backend) "cuda" is a clean DeviceError;
    # with one, the cache keeps the same bookkeeping over device storage.
    try:
        cache = PagedKVCache(L, H, D, B, 40, device="cuda", num_blocks=4)
    except DeviceError as exc:
        assert "cuda" in str(exc).lower()
    else:
        assert cache.device == "cuda" and cache.num_blocks == 4


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_lookup_into_preallocated_buffers(dtype: str) -> None:
    cache = make_cache(dtype)
    k, v = rand(2, 5, H, D, seed=1), rand(2, 5, H, D, seed=2)
    cache.append_kv(k, v, [0, 1])
    cache.append_kv(k[:1, :2], v[:1, :2], [0])
    table, lens = cache.block_table([0, 1])
    want_k, want_v = cache.lookup_kv(table, lens)
    # Wider than max(lens) and full of garbage: padding must be zeroed.
    out_k = np.full((2, 9, H, D), 7, want_k.dtype)
    out_v = np.full((2, 9, H, D), 7, want_k.dtype)
    got_k, got_v = cache.lookup_kv(table, lens, out=(out_k, out_v))
    assert got_k is out_k and got_v is out_v
    assert np.array_equal(out_k[:, :7], want_k) and np.array_equal(out_v[:, :7], want_v)
    assert (out_k[:, 7:] == 0).all() and (out_v[1, 5:] == 0).all()


def test_lookup_out_buffers_are_checked() -> None:
    cache = make_cache("f16")
    cache.append_kv(rand(1, 5, H, D), rand(1, 5, H, D), [0])
    table, lens = cache.block_table([0])
    good = np.zeros((1, 5, H, D), np.float16)
    with pytest.raises(DTypeError, match="out keys must be float16, got float32"):
        cache.lookup_kv(table, lens, out=(good.astype(np.float32), good))
    with pytest.raises(ShapeError, match=r"expected \(1, >= 5, 2, 8\)"):
        cache.lookup_kv(table, lens, out=(good[:, :4], good))
    with pytest.raises(ShapeError, match="C-contiguous"):
        cache.lookup_kv(
            table,
            lens,
            out=(good, np.zeros((1, 5, D, H), np.float16).transpose(0, 1, 3, 2)),
        )


def test_lookup_sequences_and_blocks_of() -> None:
    cache = make_cache("bf16")
    k = rand(2, 6, H, D)
    cache.append_kv(k, -k, [5, 6])
    keys, values = cache.lookup_sequences([6, 5])
    want = decode(encode(k, cache.element_type), cache.element_type)
    assert np.array_equal(keys, want[::-1]) and np.array_equal(values, -want[::-1])
    table, _ = cache.block_table([5])
    assert cache.blocks_of(5).tolist() == table[0].tolist()
    assert cache.allocator.block(int(table[0, 1])).num_filled == 6 - B
