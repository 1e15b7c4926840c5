"""Exhaustive checks of the half-precision conversions against numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numba import njit

from llmir.errors import DTypeError
from llmir.runtime.cpu.codecs import (
    bf16_bits_to_f32,
    f16_bits_to_f32,
    f32_to_bf16_bits,
    f32_to_f16_bits,
)
from llmir.runtime.dtypes import (
    BF16,
    F16,
    F32,
    bf16_bits_from_f32_array,
    decode,
    element_type,
    encode,
    f32_array_from_bf16_bits,
)

ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


@njit(cache=True)
def _decode_f16(bits: Any) -> Any:
    out = np.empty(bits.size, np.float32)
    for i in range(bits.size):
        out[i] = f16_bits_to_f32(bits[i])
    return out


@njit(cache=True)
def _decode_bf16(bits: Any) -> Any:
    out = np.empty(bits.size, np.float32)
    for i in range(bits.size):
        out[i] = bf16_bits_to_f32(bits[i])
    return out


@njit(cache=True)
def _encode_f16(x: Any) -> Any:
    out = np.empty(x.size, np.uint16)
    for i in range(x.size):
        out[i] = f32_to_f16_bits(x[i])
    return out


@njit(cache=True)
def _encode_bf16(x: Any) -> Any:
    out = np.empty(x.size, np.uint16)
    for i in range(x.size):
        out[i] = f32_to_bf16_bits(x[i])
    return out


def _bf16_magnitude(m: int) -> float:
    """Exact value of the non-negative bf16 pattern m; 0x7F80 (inf) counts as
    2**128, the next step after the largest finite value, as RNE needs."""
    e, f = m >> 7, m & 0x7F
    if e == 0:
        return f * 2.0**-133
    return (1 + f / 128) * 2.0 ** (e - 127)


def _bf16_reference(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """bf16 round to nearest even, written independently of dtypes.py: the
    exact value in float64 against its two bf16 neighbours, the even one on a
    tie.  NaN -> the upper half with the quiet bit set."""
    out = np.empty(x.size, np.uint16)
    for i, bits in enumerate(x.astype(np.float32).view(np.uint32).tolist()):
        sign, mag = bits >> 31, bits & 0x7FFFFFFF
        if mag > 0x7F800000:
            out[i] = (bits >> 16) | 0x40
            continue
        if mag == 0x7F800000:
            out[i] = bits >> 16
            continue
        val = float(np.array([mag], np.uint32).view(np.float32)[0])
        lo = mag >> 16
        d_lo = val - _bf16_magnitude(lo)
        d_hi = _bf16_magnitude(lo + 1) - val
        pick = lo if d_lo < d_hi or (d_lo == d_hi and lo % 2 == 0) else lo + 1
        out[i] = (sign << 15) | pick
    return out


def _special_and_random_f32(n: int = 4000) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    special = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            65504.0,
            65520.0,
            65519.99,
            1e-8,
            6.1e-5,
            5.96e-8,
            2.98e-8,
            2.99e-8,
            1.0 + 2**-11,
            1.0 + 3 * 2**-11,
            3.4e38,
            -3.4e38,
            1.17549435e-38,
            1e-45,
        ],
        dtype=np.float32,
    )
    # Exact halfway points of bf16 (ties) and values a hair off them.
    ties = (rng.integers(0, 1 << 16, 1000).astype(np.uint32) << 16) | 0x8000
    near = np.concatenate([ties, ties + 1, ties - 1]).view(np.float32)
    return np.concatenate([random_bits.view(np.float32), special, near])


def test_f16_decode_all_patterns_match_numpy() -> None:
    got = _decode_f16(ALL_BITS)
    want = ALL_BITS.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.isnan(got[nan]).all()
    # Sign and payload kept (hardware quiets signalling NaNs: bit 22 set).
    quiet = np.uint32(1 << 22)
    assert np.array_equal(
        got[nan].view(np.uint32) | quiet, want[nan].view(np.uint32) | quiet
    )


def test_f16_round_trip_all_patterns() -> None:
    decoded = ALL_BITS.view(np.float16).astype(np.float32)
    back = _encode_f16(decoded)
    nan = np.isnan(decoded)
    assert np.array_equal(back[~nan], ALL_BITS[~nan])
    assert np.isnan(back[nan].view(np.float16)).all()


def test_f16_encode_matches_numpy() -> None:
    x = _special_and_random_f32()
    got = _encode_f16(x)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.isnan(got[nan].view(np.float16)).all()


def test_bf16_decode_all_patterns() -> None:
    got = _decode_bf16(ALL_BITS)
    want = (ALL_BITS.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(
        f32_array_from_bf16_bits(ALL_BITS).view(np.uint32), want.view(np.uint32)
    )


def test_bf16_round_trip_all_patterns() -> None:
    decoded = (ALL_BITS.astype(np.uint32) << 16).view(np.float32)
    nan = np.isnan(decoded)
    for back in (_encode_bf16(decoded), bf16_bits_from_f32_array(decoded)):
        assert np.array_equal(back[~nan], ALL_BITS[~nan])
        # NaNs stay NaN with the quiet bit set.
        assert np.array_equal(back[nan], ALL_BITS[nan] | 0x40)


def test_bf16_encode_matches_reference() -> None:
    x = _special_and_random_f32()
    want = _bf16_reference(x)
    assert np.array_equal(_encode_bf16(x), want)
    assert np.array_equal(bf16_bits_from_f32_array(x), want)


@pytest.mark.parametrize("kind", [F32, F16, BF16])
def test_numpy_encode_decode(kind: Any) -> None:
    x = np.array([1.0, -2.5, 3.140625, np.inf], np.float32)
    assert np.array_equal(decode(encode(x, kind), kind), x)


def test_storage_kind_resolution() -> None:
    assert element_type("half") is F16
    assert element_type(np.float16) is F16
    assert element_type("bfloat16") is BF16
    with pytest.raises(DTypeError, match="int16"):
        element_type("int16")
