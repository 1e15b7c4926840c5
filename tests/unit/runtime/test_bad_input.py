"""Every bad input of the issue: a clear llmir error, raised before any
mutation, so the cache (bookkeeping and pool bytes) is exactly as before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from llmir import paged_attention
from llmir.errors import (
    BlockTableError,
    ConfigError,
    DTypeError,
    LLMIRError,
    OutOfBlocksError,
    PoolTooLargeError,
    SequenceError,
    SequenceTooLongError,
    ShapeError,
    UnknownSequenceError,
)
from llmir.runtime import PagedKVCache

L, H, D, B, MAX = 2, 2, 4, 4, 16


def kv(
    batch: int, t: int, *, heads: int = H, dim: int = D, dtype: Any = np.float32
) -> Any:
    return np.ones((batch, t, heads, dim), dtype)


@pytest.fixture
def cache() -> PagedKVCache:
    """Two sequences already stored, so 'unchanged' is not trivially true."""
    c = PagedKVCache(L, H, D, B, MAX, "f16", num_blocks=8)
    c.append_kv(kv(2, 6), kv(2, 6), [0, 1], layer=0)
    c.append_kv(kv(2, 6) * 2, kv(2, 6) * 2, [0, 1], layer=1)
    c.append_kv(kv(1, 1) * 3, kv(1, 1) * 3, [1], layer=0)  # seq 1 half-appended
    return c


CASES: list[tuple[str, Callable[[PagedKVCache], Any], type[LLMIRError], str]] = [
    (
        "too long",
        lambda c: c.append_kv(kv(2, 11), kv(2, 11), [0, 2]),
        SequenceTooLongError,
        "sequence 0 would grow to 17 tokens, max_seq_len is 16",
    ),
    (
        "too long, new seq",
        lambda c: c.append_kv(kv(1, 17), kv(1, 17), [5]),
        SequenceTooLongError,
        "sequence 5 would grow to 17 tokens",
    ),
    (
        "pool exhausted",
        lambda c: c.append_kv(kv(2, 9), kv(2, 9), [3, 4]),
        OutOfBlocksError,
        "needs 6 new blocks, only 4 of 8 are free",
    ),
    (
        "head count",
        lambda c: c.append_kv(kv(1, 1, heads=3), kv(1, 1, heads=3), [0]),
        ShapeError,
        "keys have 3 heads, the cache has 2",
    ),
    (
        "head_dim",
        lambda c: c.append_kv(kv(1, 1, dim=8), kv(1, 1, dim=8), [0]),
        ShapeError,
        "keys have head_dim 8, the cache has 4",
    ),
    (
        "rank",
        lambda c: c.append_kv(
            np.ones((1, H, D), np.float32), np.ones((1, H, D), np.float32), [0]
        ),
        ShapeError,
        r"keys must be 4-D \[batch, T, H, D\], got shape \(1, 2, 4\)",
    ),
    (
        "k/v shapes differ",
        lambda c: c.append_kv(kv(1, 2), kv(1, 1), [0]),
        ShapeError,
        "differs from values shape",
    ),
    (
        "seq_ids length",
        lambda c: c.append_kv(kv(2, 1), kv(2, 1), [0]),
        ShapeError,
        r"seq_ids has shape \(1,\), expected \(2,\)",
    ),
    (
        "dtype float64",
        lambda c: c.append_kv(
            kv(1, 1, dtype=np.float64), kv(1, 1, dtype=np.float64), [0]
        ),
        DTypeError,
        "a f16 cache accepts keys of float32, float16, uint16, got float64",
    ),
    (
        "k/v dtypes differ",
        lambda c: c.append_kv(kv(1, 1), kv(1, 1, dtype=np.float16), [0]),
        DTypeError,
        "keys are float32 but values are float16",
    ),
    (
        "not 4-D",
        lambda c: c.append_kv([[1.0]], [[1.0]], [0]),
        ShapeError,
        r"keys must be 4-D \[batch, T, H, D\], got shape \(1, 1\)",
    ),
    (
        "layer out of range",
        lambda c: c.append_kv(kv(1, 1), kv(1, 1), [0], layer=2),
        ShapeError,
        "layer 2 is out of range, the cache has 2 layers",
    ),
    (
        "duplicate seq id",
        lambda c: c.append_kv(kv(3, 1), kv(3, 1), [7, 0, 7]),
        SequenceError,
        "sequence 7 appears more than once in the batch",
    ),
    (
        "all layers, wrong L",
        lambda c: c.append_kv_all_layers(
            np.ones((3, 1, 1, H, D), np.float32),
            np.ones((3, 1, 1, H, D), np.float32),
            [0],
        ),
        ShapeError,
        "keys carry 3 layers, the cache has 2",
    ),
    (
        "all layers, half-appended step",
        lambda c: c.append_kv_all_layers(
            np.ones((L, 2, 1, H, D), np.float32),
            np.ones((L, 2, 1, H, D), np.float32),
            [0, 1],
        ),
        SequenceError,
        r"sequence 1 has a step half-appended \(tokens per layer: \[7, 6\]\)",
    ),
    (
        "negative block index",
        lambda c: c.lookup_kv(np.array([[0, -5]], np.int32), np.array([6], np.int32)),
        BlockTableError,
        r"block_table\[0, 1\] = -5 is out of range",
    ),
    (
        "block index past the pool",
        lambda c: c.lookup_kv(np.array([[0, 8]], np.int32), np.array([6], np.int32)),
        BlockTableError,
        r"block_table\[0, 1\] = 8 is out of range, the pool has 8 blocks",
    ),
    (
        "seq_lens past the table",
        lambda c: c.lookup_kv(np.array([[0, 1]], np.int32), np.array([9], np.int32)),
        BlockTableError,
        "seq_lens.0. = 9 but block_table covers only 8 tokens",
    ),
    (
        "lookup layer",
        lambda c: c.lookup_kv(*c.block_table([0]), layer=-1),
        ShapeError,
        "layer -1 is out of range",
    ),
    (
        "unknown id in block_table",
        lambda c: c.block_table([0, 42]),
        UnknownSequenceError,
        "unknown sequence id 42",
    ),
    (
        "unknown id in free",
        lambda c: c.free_sequence(42),
        UnknownSequenceError,
        "unknown sequence id 42",
    ),
    (
        "unknown id in seq_len",
        lambda c: c.seq_len(42),
        UnknownSequenceError,
        "unknown sequence id 42",
    ),
    # -- ids: integers within int32, nothing else, in every call --------------------
    (
        "uint64 id 2^64-1",
        lambda c: c.append_kv(kv(1, 1), kv(1, 1), np.array([2**64 - 1], np.uint64)),
        SequenceError,
        "sequence id 18446744073709551615 does not fit in int32",
    ),
    (
        "uint64 id 2^63",
        lambda c: c.append_kv(kv(1, 1), kv(1, 1), np.array([2**63], np.uint64)),
        SequenceError,
        "sequence id 9223372036854775808 does not fit in int32",
    ),
    (
        "int64 id 2^31",
        lambda c: c.block_table(np.array([2**31], np.int64)),
        SequenceError,
        "sequence id 2147483648 does not fit in int32",
    ),
    (
        "bool ids",
        lambda c: c.append_kv(kv(1, 1), kv(1, 1), np.array([True])),
        SequenceError,
        "must be integers, got dtype bool",
    ),
    (
        "float ids",
        lambda c: c.append_kv(kv(1, 1), kv(1, 1), [1.0]),
        SequenceError,
        "must be integers, got dtype float64",
    ),
    ("free True", lambda c: c.free_sequence(True), SequenceError, "True is not"),
    ("free 0.0", lambda c: c.free_sequence(0.0), SequenceError, "0.0 is not"),
    ("free '0'", lambda c: c.free_sequence("0"), SequenceError, "'0' is not"),
    (
        "free a list with an unknown id",
        lambda c: c.free_sequences([0, 42]),
        UnknownSequenceError,
        "unknown sequence id 42",
    ),
    (
        "free an id twice",
        lambda c: c.free_sequences([1, 1]),
        SequenceError,
        "sequence 1 appears more than once",
    ),
    ("seq_len of a float", lambda c: c.seq_len(1.0), SequenceError, "1.0 is not"),
    # -- outputs that alias ------------------------------------------------------------
    (
        "lookup out aliased",
        lambda c: c.lookup_kv(*c.block_table([0]), out=(_buf(), _buf()[...])),
        ShapeError,
        "out keys and values overlap each other",
    ),
    (
        "lookup out in the pool",
        lambda c: c.lookup_kv(
            *c.block_table([0]),
            out=(_pool_view(c), np.empty((1, 6, H, D), np.float16)),
        ),
        ShapeError,
        "out keys overlaps the cache's pool",
    ),
    (
        "attention out is the query",
        lambda c: _attend(c, out="query"),
        ShapeError,
        "out overlaps the query",
    ),
    # -- attention options: the verifier's rules ----------------------------------------
    ("scale 1e38", lambda c: _attend(c, scale=1e38), ConfigError, "float32 range"),
    ("scale 'a'", lambda c: _attend(c, scale="a"), ConfigError, "must be a number"),
    ("scale inf", lambda c: _attend(c, scale=np.inf), ConfigError, "got inf"),
    (
        "soft cap inf",
        lambda c: _attend(c, logits_soft_cap=float("inf")),
        ConfigError,
        "logits_soft_cap must be a finite positive number, got inf",
    ),
    (
        "window True",
        lambda c: _attend(c, sliding_window=True),
        ConfigError,
        "sliding_window must be an integer",
    ),
    ("layer 1.0", lambda c: _attend(c, layer=1.0), ShapeError, "layer 1.0 is out"),
]


_SHARED = np.empty((1, 6, H, D), np.float16)


def _buf() -> np.ndarray:
    """The same memory on every call: two views of one buffer."""
    return _SHARED


def _pool_view(cache: PagedKVCache) -> np.ndarray:
    """A C-contiguous float16 array living inside the cache's pool."""
    flat = cache.kv_pool.reshape(-1)[: 6 * H * D]
    return flat.view(np.float16).reshape(1, 6, H, D)


def _attend(cache: PagedKVCache, **options: Any) -> Any:
    table, lens = cache.block_table([0, 1])
    query = np.ones((2, 1, H, D), np.float32)
    if options.get("out") == "query":
        options["out"] = query
    return paged_attention(query, cache, table, lens, **options)


@pytest.mark.parametrize(
    ("call", "error", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_rejected_without_change(
    cache: PagedKVCache,
    cache_state: Callable[[PagedKVCache], Any],
    call: Callable[[PagedKVCache], Any],
    error: type[Exception],
    message: str,
) -> None:
    before = cache_state(cache)
    with pytest.raises(error, match=message):
        call(cache)
    assert cache_state(cache) == before


def test_empty_batch_is_a_no_op(
    cache: PagedKVCache, cache_state: Callable[[PagedKVCache], Any]
) -> None:
    before = cache_state(cache)
    out = cache.append_kv(kv(0, 3), kv(0, 3), np.zeros(0, np.int64))
    assert out.shape == (0, 3)
    out = cache.append_kv(kv(2, 0), kv(2, 0), [0, 9])  # zero tokens: no new sequence
    assert out.shape == (2, 0)
    empty = np.ones((L, 0, 1, H, D), np.float32)
    assert cache.append_kv_all_layers(empty, empty, []).shape == (0, 1)
    keys, values = cache.lookup_kv(np.zeros((0, 0), np.int32), np.zeros(0, np.int32))
    assert keys.shape == values.shape == (0, 0, H, D)
    assert cache_state(cache) == before


def test_exhausted_pool_then_free_makes_room(cache: PagedKVCache) -> None:
    with pytest.raises(OutOfBlocksError):
        cache.append_kv(kv(2, 9), kv(2, 9), [3, 4])
    cache.free_sequence(0)
    cache.append_kv(kv(2, 9), kv(2, 9), [3, 4])
    assert cache.seq_len(3) == 9 and cache.stats().blocks_free == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_blocks": 4.5}, ConfigError, "num_blocks must be an integer, got 4.5"),
        ({"num_heads": True}, ConfigError, "num_heads must be an integer, got True"),
        ({"head_dim": "4"}, ConfigError, "head_dim must be an integer, got '4'"),
        (
            {"memory_budget_bytes": "1000000"},
            ConfigError,
            "memory_budget_bytes must be an integer, got '1000000'",
        ),
        ({"memory_budget_bytes": 2**50}, PoolTooLargeError, "more than the"),
        ({"num_blocks": 2**26}, PoolTooLargeError, r"needs .* bytes\), more than"),
        (
            {"num_layers": 2**31},
            ConfigError,
            r"num_layers must be in \[1, 2147483647\]",
        ),
        ({"dtype": "int16"}, DTypeError, "unsupported KV cache element type 'int16'"),
        ({"device": "tpu"}, LLMIRError, "unknown device 'tpu'"),
    ],
)
def test_bad_configuration(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    params: dict[str, Any] = {
        "num_layers": 32,
        "num_heads": 8,
        "head_dim": 128,
        "block_size": 16,
        "max_seq_len": 4096,
        "dtype": "f16",
    }
    params.update(kwargs)
    with pytest.raises(error, match=message):
        PagedKVCache(**params)


def test_numpy_integer_parameters_do_not_overflow() -> None:
    """np.int32 sizes used to multiply in int32: a 32 TiB 'block' became 0."""
    dims = [np.int32(v) for v in (32, 8, 128, 16, 4096)]
    cache = PagedKVCache(*dims, "f16", memory_budget_bytes=2**30)  # pyright: ignore[reportArgumentType]
    assert cache.geometry.bytes_per_block == 32 * 8 * 2 * 16 * 128 * 2
    # 2 MiB of K/V and 12 bytes of bookkeeping per block: 511 fit in 1 GiB.
    assert cache.num_blocks == 2**30 // (cache.geometry.bytes_per_block + 12) == 511
    assert all(type(v) is int for v in (cache.num_layers, cache.head_dim))


def test_bookkeeping_grows_with_use_not_with_max_seq_len() -> None:
    """A sequence table sized by max_seq_len up front took 128 GiB here."""
    cache = PagedKVCache(1, 1, 1, 1, 2**31 - 1, num_blocks=64)
    assert cache.sequences._tables.nbytes < 4096  # pyright: ignore[reportPrivateUsage]
    cache.append_kv(
        np.ones((1, 40, 1, 1), np.float32), np.ones((1, 40, 1, 1), np.float32), [3]
    )
    assert cache.blocks_of(3).size == 40
    assert cache.sequences._tables.shape[1] < 128  # pyright: ignore[reportPrivateUsage]
