"""Append (scatter) and lookup (gather) kernels against numpy and the CPU
storage, for every storage kind."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cuda_helpers import KINDS, to_device

from llmir.errors import BlockTableError, DTypeError, ShapeError
from llmir.runtime import cuda as kvcuda
from llmir.runtime.cpu_storage import CPUStorage
from llmir.runtime.dtypes import decode, encode, storage_kind
from llmir.runtime.layout import pool_shape

# 65520 overflows f16 to inf on purpose.
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered in cast:RuntimeWarning"
)

L, NB, H, B, D = 2, 6, 2, 4, 8


def _pools(kind_name: str) -> tuple[Any, CPUStorage]:
    kind = storage_kind(kind_name)
    shape = pool_shape(L, NB, H, B, D)
    device_pool = to_device(np.zeros(shape, dtype=kind.storage_dtype))
    cpu = CPUStorage(
        num_layers=L, num_blocks=NB, num_heads=H, block_size=B, head_dim=D, kind=kind
    )
    return device_pool, cpu


def _special_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Normal values salted with the cases conversions get wrong: ties,
    subnormals, overflow, infinities, NaN."""
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    specials = np.array(
        [
            np.inf,
            -np.inf,
            np.nan,
            1e-40,
            -3e-8,
            65520.0,
            1.0 + 2.0**-11,
            1.0 + 2.0**-8,
            0.0,
            -0.0,
        ],
        dtype=np.float32,
    )
    flat[: specials.size] = specials
    return x


@pytest.mark.parametrize("kind_name", KINDS)
def test_append_layer_encodes_like_numpy_and_cpu(
    kind_name: str, rng: np.random.Generator
) -> None:
    kind = storage_kind(kind_name)
    device_pool, cpu = _pools(kind_name)
    n = 7
    keys = _special_values(rng, (n, H, D))
    values = rng.standard_normal((n, H, D)).astype(np.float32)
    slots = rng.permutation(NB * B)[:n].astype(np.int32)
    slots[3] = -1  # a padding token: skipped

    kvcuda.append_kv(device_pool, kind, keys, values, slots, layer=1)
    # The CPU backend has no "skip" slot (the cache never asks for one).
    kept = slots >= 0
    cpu.write(1, keys[None, kept], values[None, kept], slots[kept])

    got = device_pool.copy_to_host()
    # Bit for bit what the CPU backend stores (NaN payloads included).
    np.testing.assert_array_equal(got.view(np.uint8), cpu.kv_pool.view(np.uint8))
    for t, slot in enumerate(slots):
        if slot < 0:
            continue
        stored = got[1, slot // B, :, 0, slot % B]
        np.testing.assert_array_equal(stored, encode(keys[t], kind))
    assert not got[0].any(), "layer 0 was not written"
    skipped = np.ones(NB * B, bool)
    skipped[slots[slots >= 0]] = False
    assert not got[1].transpose(0, 3, 1, 2, 4).reshape(NB * B, -1)[skipped].any()


@pytest.mark.parametrize("kind_name", KINDS)
def test_append_all_layers_matches_per_layer_appends(
    kind_name: str, rng: np.random.Generator
) -> None:
    kind = storage_kind(kind_name)
    whole, _ = _pools(kind_name)
    per_layer, _ = _pools(kind_name)
    n = 5
    keys = rng.standard_normal((L, n, H, D)).astype(np.float32)
    values = rng.standard_normal((L, n, H, D)).astype(np.float32)
    slots = rng.permutation(NB * B)[:n].astype(np.int32)
    kvcuda.append_kv(whole, kind, keys, values, slots, layer=None)
    for layer in range(L):
        kvcuda.append_kv(
            per_layer, kind, keys[layer], values[layer], slots, layer=layer
        )
    np.testing.assert_array_equal(whole.copy_to_host(), per_layer.copy_to_host())


@pytest.mark.parametrize("kind_name", ["f16", "bf16"])
def test_append_of_stored_representation_is_bit_exact(
    kind_name: str, rng: np.random.Generator
) -> None:
    kind = storage_kind(kind_name)
    device_pool, _ = _pools(kind_name)
    n = 4
    bits = rng.integers(
        0, 2**16, size=(2, n, H, D), dtype=np.uint16
    )  # NaN payloads too
    slots = np.arange(n, dtype=np.int32) * 3
    kvcuda.append_kv(device_pool, kind, bits[0], bits[1], slots, layer=0)
    got = device_pool.copy_to_host()
    for t, slot in enumerate(slots):
        np.testing.assert_array_equal(got[0, slot // B, :, 0, slot % B], bits[0, t])
        np.testing.assert_array_equal(got[0, slot // B, :, 1, slot % B], bits[1, t])


@pytest.mark.parametrize("kind_name", KINDS)
@pytest.mark.parametrize("as_float32", [True, False])
def test_gather_matches_cpu_storage(
    kind_name: str, as_float32: bool, rng: np.random.Generator
) -> None:
    kind = storage_kind(kind_name)
    device_pool, cpu = _pools(kind_name)
    stored = encode(rng.standard_normal(pool_shape(L, NB, H, B, D)), kind)
    device_pool.copy_to_device(stored)
    cpu.kv_pool[...] = stored
    table = np.array([[4, 1, -1], [0, 5, 2]], dtype=np.int32)
    lens = np.array([6, 9], dtype=np.int32)
    got_k, got_v = kvcuda.gather_kv(
        device_pool, kind, 1, table, lens, max_len=10, as_float32=as_float32
    )
    want_k, want_v = cpu.gather(1, table, lens, 10, as_float32)
    assert got_k.dtype == want_k.dtype and got_k.shape == (2, 10, H, D)
    np.testing.assert_array_equal(got_k, want_k)
    np.testing.assert_array_equal(got_v, want_v)
    # And against the layout rule directly.
    p = 5
    expected = decode(stored[1, table[1, p // B], :, 0, p % B], kind)
    np.testing.assert_array_equal(np.asarray(got_k[1, p], np.float32), expected)
    assert not np.asarray(got_k[0, 6:], np.float32).any()


def test_out_of_range_block_is_rejected_before_launch() -> None:
    kind = storage_kind("f32")
    device_pool, _ = _pools("f32")
    table = np.array([[0, NB]], dtype=np.int32)
    with pytest.raises(
        BlockTableError, match=rf"block_table\[0, 1\] = {NB} is out of range"
    ):
        kvcuda.gather_kv(device_pool, kind, 0, table, np.array([5]))


def test_bad_slot_is_rejected_and_pool_untouched(rng: np.random.Generator) -> None:
    kind = storage_kind("f32")
    device_pool, _ = _pools("f32")
    keys = rng.standard_normal((3, H, D)).astype(np.float32)
    before = device_pool.copy_to_host()
    with pytest.raises(
        BlockTableError, match=rf"slot_mapping\[2\] = {NB * B} is out of range"
    ):
        kvcuda.append_kv(
            device_pool, kind, keys, keys, np.array([0, 1, NB * B]), layer=0
        )
    with pytest.raises(BlockTableError, match=r"slot_mapping\[0\] = -2"):
        kvcuda.append_kv(device_pool, kind, keys, keys, np.array([-2, 1, 2]), layer=0)
    with pytest.raises(ShapeError, match="layer 2 is out of range"):
        kvcuda.append_kv(device_pool, kind, keys, keys, np.array([0, 1, 2]), layer=2)
    with pytest.raises(DTypeError, match="float64"):
        kvcuda.append_kv(
            device_pool, kind, keys.astype(np.float64), keys, [0, 1, 2], layer=0
        )
    with pytest.raises(ShapeError, match="shape"):
        kvcuda.append_kv(
            device_pool, kind, keys[:2], keys[:2], np.array([0, 1, 2]), layer=0
        )
    np.testing.assert_array_equal(device_pool.copy_to_host(), before)
