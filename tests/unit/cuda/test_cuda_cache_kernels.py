"""Append (scatter) and lookup (gather) of the CUDA backend against numpy and
the CPU backend, for every element type.  (Argument checks happen once, at
the `PagedKVCache` boundary: test_cuda_device_cache.py runs them on a CUDA
cache.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cuda_helpers import KINDS

from llmir.runtime import cuda as kvcuda
from llmir.runtime.cpu import CPUBackend
from llmir.runtime.dtypes import decode, element_type, encode
from llmir.runtime.geometry import CacheGeometry
from llmir.runtime.validation import validate_block_table

# 65520 overflows f16 to inf on purpose.
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered in cast:RuntimeWarning"
)

L, NB, H, B, D = 2, 6, 2, 4, 8


def _geometry(kind_name: str) -> CacheGeometry:
    return CacheGeometry(element_type(kind_name), L, H, D, B, NB * B)


def _backends(kind_name: str) -> tuple[Any, CPUBackend]:
    geometry = _geometry(kind_name)
    return kvcuda.CUDABackend(geometry, NB), CPUBackend(geometry, NB)


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
    kind = element_type(kind_name)
    gpu, cpu = _backends(kind_name)
    n = 7
    keys = _special_values(rng, (1, n, H, D))
    values = rng.standard_normal((1, n, H, D)).astype(np.float32)
    slots = rng.permutation(NB * B)[:n].astype(np.int32)

    gpu.write(1, keys, values, slots)
    cpu.write(1, keys, values, slots)

    got = gpu.kv_pool.copy_to_host()
    # Bit for bit what the CPU backend stores, except NaN payloads: a GPU's
    # f32 -> f16 conversion writes its canonical NaN (0x7FFF) where the CPU's
    # keeps the payload (0x7E00 for a quiet NaN).  Both stay NaN.
    stored = kind.decode(got)
    nan = np.isnan(stored)
    np.testing.assert_array_equal(nan, np.isnan(kind.decode(cpu.kv_pool)))
    np.testing.assert_array_equal(got[~nan], cpu.kv_pool[~nan])
    assert nan.sum() == np.isnan(keys).sum() == 1
    for t, slot in enumerate(slots):
        row = got[1, slot // B, :, 0, slot % B]
        want = encode(keys[0, t], kind)
        finite = ~np.isnan(kind.decode(want))
        np.testing.assert_array_equal(row[finite], want[finite])
    assert not got[0].any(), "layer 0 was not written"
    untouched = np.ones(NB * B, bool)
    untouched[slots] = False
    assert not got[1].transpose(0, 3, 1, 2, 4).reshape(NB * B, -1)[untouched].any()


@pytest.mark.parametrize("kind_name", KINDS)
def test_append_all_layers_matches_per_layer_appends(
    kind_name: str, rng: np.random.Generator
) -> None:
    whole, _ = _backends(kind_name)
    per_layer, _ = _backends(kind_name)
    n = 5
    keys = rng.standard_normal((L, n, H, D)).astype(np.float32)
    values = rng.standard_normal((L, n, H, D)).astype(np.float32)
    slots = rng.permutation(NB * B)[:n].astype(np.int32)
    whole.write(None, keys, values, slots)
    for layer in range(L):
        per_layer.write(
            layer, keys[layer : layer + 1], values[layer : layer + 1], slots
        )
    np.testing.assert_array_equal(
        whole.kv_pool.copy_to_host(), per_layer.kv_pool.copy_to_host()
    )


@pytest.mark.parametrize("kind_name", ["f16", "bf16"])
def test_append_of_stored_representation_is_bit_exact(
    kind_name: str, rng: np.random.Generator
) -> None:
    gpu, _ = _backends(kind_name)
    n = 4
    bits = rng.integers(
        0, 2**16, size=(2, 1, n, H, D), dtype=np.uint16
    )  # NaN payloads too
    slots = np.arange(n, dtype=np.int32) * 3
    gpu.write(0, bits[0], bits[1], slots)
    got = gpu.kv_pool.copy_to_host()
    bits = bits[:, 0]
    for t, slot in enumerate(slots):
        np.testing.assert_array_equal(got[0, slot // B, :, 0, slot % B], bits[0, t])
        np.testing.assert_array_equal(got[0, slot // B, :, 1, slot % B], bits[1, t])


@pytest.mark.parametrize("kind_name", KINDS)
@pytest.mark.parametrize("as_float32", [True, False])
def test_gather_matches_cpu_storage(
    kind_name: str, as_float32: bool, rng: np.random.Generator
) -> None:
    kind = element_type(kind_name)
    gpu, cpu = _backends(kind_name)
    stored = encode(rng.standard_normal(_geometry(kind_name).pool_shape(NB)), kind)
    gpu.kv_pool.copy_to_device(stored)
    cpu.kv_pool[...] = stored
    table = np.array([[4, 1, -1], [0, 5, 2]], dtype=np.int32)
    lens = np.array([6, 9], dtype=np.int32)
    checked = validate_block_table(
        table, lens, block_size=B, num_blocks=NB, max_seq_len=NB * B
    )
    dtype = kind.out_dtype(as_float32)
    out = (np.empty((2, 10, H, D), dtype), np.empty((2, 10, H, D), dtype))
    got_k, got_v = gpu.gather(1, checked, as_float32, out)
    want_k, want_v = cpu.gather(1, checked, as_float32, None)
    assert got_k is out[0] and got_k.shape == (2, 10, H, D)
    assert want_k.shape == (2, 9, H, D)
    np.testing.assert_array_equal(got_k[:, :9], want_k)
    np.testing.assert_array_equal(got_v[:, :9], want_v)
    assert not np.asarray(got_k[:, 9:], np.float32).any()
    # And against the layout rule directly.
    p = 5
    expected = decode(stored[1, table[1, p // B], :, 0, p % B], kind)
    np.testing.assert_array_equal(np.asarray(got_k[1, p], np.float32), expected)
    assert not np.asarray(got_k[0, 6:], np.float32).any()
