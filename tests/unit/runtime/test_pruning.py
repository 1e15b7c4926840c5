"""Attention sinks and token pruning (StreamingLLM): the kernels' sink mask
against the float64 reference, holes never read, a pruned cache
bit-identical to one that never pruned, the block bound, and bad input.
(Random traces mixing pruning with forks, swaps and frees are in
test_pruning_state_machine.py.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from llmir.errors import (
    BlockTableError,
    ConfigError,
    OutOfBlocksError,
    SequenceError,
)
from llmir.runtime import PagedKVCache
from llmir.runtime.cpu.attention_kernels import run_paged_attention
from llmir.runtime.dtypes import FLOAT_TYPES, element_type
from llmir.testing.reference import (
    build_paged_pool,
    reference_block_mass,
    reference_paged_attention,
)

F32_TOL = {"rtol": 1e-5, "atol": 1e-5}
HALF_TOL = {"rtol": 1e-3, "atol": 1e-3}


def kernel(
    query: npt.NDArray[np.float32],
    layer_pool: npt.NDArray[Any],
    code: int,
    table: npt.NDArray[np.int32],
    lens: npt.NDArray[np.int32],
    **options: Any,
) -> npt.NDArray[np.float32]:
    out = np.full(query.shape, np.nan, np.float32)
    run_paged_attention(
        query, layer_pool, code, table, lens, out, scale=0.25, **options
    )
    return out


@pytest.mark.parametrize("kind_name", list(FLOAT_TYPES))
@pytest.mark.parametrize(
    "q_heads, tq, window, sinks, partition",
    [
        (2, 1, 7, 3, None),  # MHA decode: the direct-from-pool path
        (8, 1, 12, 5, None),  # GQA 4: the vector tiles for halves
        (8, 5, 9, 4, None),  # prefill rows with different windows
        (4, 3, 16, 20, None),  # sinks reaching into the window
        (2, 1, 10, 2, 16),  # a context split in partitions
        (4, 2, 1, 1, 8),
    ],
)
def test_sinks_match_the_reference_and_holes_are_never_read(
    kind_name: str,
    q_heads: int,
    tq: int,
    window: int,
    sinks: int,
    partition: int | None,
) -> None:
    kind = element_type(kind_name)
    rng = np.random.default_rng(window * 31 + sinks)
    lens = [70, 3, 41, 0, 25]
    keys = [rng.standard_normal((n, 2, 16)) for n in lens]
    values = [rng.standard_normal((n, 2, 16)) for n in lens]
    pool = build_paged_pool(keys, values, 4, kind, rng, spare_blocks=1)
    query = rng.standard_normal((len(lens), tq, q_heads, 16)).astype(np.float32)
    options: dict[str, Any] = {"sliding_window": window, "sink_tokens": sinks}
    if partition:
        options["partition_size"] = partition
    layer_pool = pool.kv_pool[0]
    got = kernel(
        query, layer_pool, kind.code, pool.block_table, pool.seq_lens, **options
    )
    want = reference_paged_attention(
        query,
        layer_pool,
        kind,
        pool.block_table,
        pool.seq_lens,
        scale=0.25,
        sliding_window=window,
        sink_tokens=sinks,
    )
    np.testing.assert_allclose(got, want, **(HALF_TOL if kind.is_half else F32_TOL))

    # Point every block no query sees at a block of NaNs: the output is
    # unchanged, so the kernel skipped them unread.
    poisoned_table = pool.block_table.copy()
    spare = int(np.setdiff1d(np.arange(layer_pool.shape[0]), pool.block_table)[0])
    holes = 0
    for b, n in enumerate(lens):
        first_read = max(n - tq - window + 1, 0)
        for j in range(-(-n // 4)):
            if j * 4 >= min(sinks, n) and (j + 1) * 4 <= first_read:
                poisoned_table[b, j] = spare
                holes += 1
    assert holes, "the case has no block to skip"
    again = kernel(
        query, layer_pool, kind.code, poisoned_table, pool.seq_lens, **options
    )
    np.testing.assert_array_equal(again, got)


def caches(
    dtype: str = "f32", window: int = 40, sinks: int | None = 4, **kwargs: Any
) -> tuple[PagedKVCache, PagedKVCache]:
    pruned = PagedKVCache(
        2, 2, 16, 8, 4096, dtype, window_tokens=window, sink_tokens=sinks, **kwargs
    )
    plain = PagedKVCache(2, 2, 16, 8, 4096, dtype, num_blocks=1100)
    return pruned, plain


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_a_long_generation_stays_bit_identical_in_a_bounded_pool(dtype: str) -> None:
    """Two sequences decode 1500 tokens in a pool sized to the bound; every
    50th step, attention (decode, and a partitioned batch-1 call) equals
    the never-pruned cache's bit for bit."""
    window, sinks, block = 40, 4, 8
    bound = -(-sinks // block) + -(-window // block) + 1
    pruned, plain = caches(dtype, window, sinks, num_blocks=2 * bound)
    rng = np.random.default_rng(3)
    prompt = rng.standard_normal((2, 2, 13, 2, 16)).astype(np.float32)
    for cache in (pruned, plain):
        cache.append_kv_all_layers(prompt, -prompt, [0, 1])
    peak = 0
    for step in range(1500):
        x = rng.standard_normal((2, 2, 1, 2, 16)).astype(np.float32)
        for cache in (pruned, plain):
            cache.append_kv_all_layers(x, x * 0.5, [0, 1])
        peak = max(peak, pruned.stats().blocks_used)
        if step % 50 == 49:
            query = rng.standard_normal((2, 1, 4, 16)).astype(np.float32)
            for ids in ([0, 1], [1]):
                outputs = [
                    c.paged_attention(
                        query[: len(ids)],
                        *c.block_table(ids),
                        1,
                        sliding_window=window,
                        sink_tokens=sinks,
                    )
                    for c in (pruned, plain)
                ]
                np.testing.assert_array_equal(outputs[0], outputs[1])
            pruned.check_invariants()
    assert peak <= 2 * bound
    stats = pruned.stats()
    assert stats.tokens_stored == 2 * (13 + 1500)
    held = [int((pruned.blocks_of(s) >= 0).sum()) for s in (0, 1)]
    assert max(held) <= bound
    assert stats.blocks_used == sum(held)
    assert stats.blocks_pruned == 2 * -(-(13 + 1500) // block) - sum(held)
    assert stats.tokens_pruned == stats.blocks_pruned * block


def test_pruning_gives_blocks_back_only_beyond_the_window() -> None:
    cache = PagedKVCache(1, 1, 4, 4, 256, num_blocks=64, window_tokens=8, sink_tokens=2)
    x = np.zeros((1, 1, 1, 4), np.float32)
    for _ in range(30):
        cache.append_kv(x, x, [7])
    # 30 tokens, last query at 29 sees 22..29 and the sinks 0..1: blocks 0,
    # 5, 6, 7 are kept; blocks 1-4 (tokens 4-19) went back as 29 - 8 + 1 =
    # 22 passed them... block 5 (20-23) is still read.
    table = cache.blocks_of(7)
    assert (table[1:5] == -1).all() and (table[[0, 5, 6, 7]] >= 0).all()
    assert cache.sequences.pruned_range(7) == (4, 20)
    assert cache.stats().blocks_used == 4


def test_a_pool_of_exactly_the_bound_decodes_forever() -> None:
    window, sinks, block = 16, 4, 4
    bound = -(-sinks // block) + -(-window // block) + 1
    cache = PagedKVCache(
        1, 1, 4, block, 4096, num_blocks=bound, window_tokens=window,
        sink_tokens=sinks,
    )  # fmt: skip
    x = np.ones((1, 1, 1, 4), np.float32)
    for _ in range(1000):
        cache.append_kv(x, x, [0])
    assert cache.seq_len(0) == 1000
    # Without pruning the same pool is full after bound * block tokens.
    plain = PagedKVCache(1, 1, 4, block, 4096, num_blocks=bound)
    with pytest.raises(OutOfBlocksError):
        for _ in range(1000):
            plain.append_kv(x, x, [0])
    assert plain.seq_len(0) == bound * block


def test_a_prefill_chunk_sees_its_whole_window() -> None:
    """Pruning follows the length before the append, so a chunk's first
    query still finds its window."""
    pruned, plain = caches(window=10, sinks=2)
    rng = np.random.default_rng(8)
    for t in (20, 7, 1, 30, 3):
        kv = rng.standard_normal((2, 1, t, 2, 16)).astype(np.float32)
        query = rng.standard_normal((1, t, 2, 16)).astype(np.float32)
        outputs = []
        for cache in (pruned, plain):
            cache.append_kv_all_layers(kv, kv, [5])
            outputs.append(
                cache.paged_attention(
                    query, *cache.block_table([5]), 0, sliding_window=10, sink_tokens=2
                )
            )
        np.testing.assert_array_equal(outputs[0], outputs[1])


def test_fork_swap_and_free_of_a_pruned_sequence(tmp_path: Any) -> None:
    pruned, plain = caches(
        window=12, sinks=3, num_blocks=40, swap_blocks=16, swap_dir=str(tmp_path)
    )
    rng = np.random.default_rng(4)
    for t in (50, 1):  # the second append prunes behind the first
        kv = rng.standard_normal((2, 1, t, 2, 16)).astype(np.float32)
        for cache in (pruned, plain):
            cache.append_kv_all_layers(kv, -kv, [0])
    assert pruned.sequences.pruned_range(0)[1] > 8
    pruned.fork(0, 1)
    plain.fork(0, 1)
    pruned.swap_out([0])
    pruned.swap_in([0])
    query = rng.standard_normal((2, 1, 4, 16)).astype(np.float32)
    outputs = [
        c.paged_attention(
            query, *c.block_table([0, 1]), 0, sliding_window=12, sink_tokens=3
        )
        for c in (pruned, plain)
    ]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    pruned.check_invariants()
    pruned.free_sequences([0, 1])
    assert pruned.stats().blocks_used == 0
    pruned.check_invariants()
    pruned.close()


def test_bad_pruning_options_are_refused() -> None:
    for kwargs, message in (
        ({"window_tokens": 0}, "window_tokens must be a positive integer"),
        ({"window_tokens": -3}, "window_tokens must be a positive integer"),
        ({"window_tokens": 8, "sink_tokens": 0}, "sink_tokens must be a positive"),
        ({"sink_tokens": 4}, "sink_tokens=4 needs window_tokens"),
        ({"window_tokens": 4097}, "window_tokens=4097 exceeds max_seq_len 4096"),
        ({"window_tokens": 8, "sink_tokens": 5000}, "sink_tokens=5000 exceeds"),
        ({"window_tokens": True}, "window_tokens must be a positive integer"),
    ):
        with pytest.raises(ConfigError, match=message):
            PagedKVCache(1, 1, 4, 4, 4096, num_blocks=4, **kwargs)
    cache = PagedKVCache(1, 1, 4, 4, 64, num_blocks=4)
    x = np.zeros((1, 1, 1, 4), np.float32)
    cache.append_kv(x, x, [0])
    q = np.zeros((1, 1, 1, 4), np.float32)
    with pytest.raises(ConfigError, match="sink_tokens=2 needs a sliding_window"):
        cache.paged_attention(q, *cache.block_table([0]), sink_tokens=2)
    with pytest.raises(ConfigError, match=r"sink_tokens must be an integer in \[1"):
        cache.paged_attention(
            q, *cache.block_table([0]), sliding_window=4, sink_tokens=-1
        )


def test_a_mask_reaching_into_the_holes_is_refused_and_changes_nothing() -> None:
    cache = PagedKVCache(1, 1, 4, 4, 256, num_blocks=16, window_tokens=8, sink_tokens=4)
    x = np.ones((1, 40, 1, 4), np.float32)
    cache.append_kv(x, x, [3])
    cache.append_kv(x[:, :1], x[:, :1], [3])  # prunes below (40 - 8 + 1) // 4
    q = np.ones((1, 1, 1, 4), np.float32)
    table, lens = cache.block_table([3])
    before = cache.snapshot()
    for options, why in (
        ({}, "1 query, no sliding_window"),  # every token is read
        ({"sliding_window": 20}, "sliding_window=20"),
        ({"sliding_window": 8, "sink_tokens": 8}, "sink_tokens=8"),
    ):
        with pytest.raises(BlockTableError, match=f"is padding.*{why}"):
            cache.paged_attention(q, table, lens, **options)
    # Eight queries of a window of 8 read back to token 41 - 8 - 8 + 1.
    with pytest.raises(BlockTableError, match="8 queries"):
        cache.paged_attention(
            np.ones((1, 8, 1, 4), np.float32), table, lens, sliding_window=8
        )
    with pytest.raises(SequenceError, match=r"sequence 3 was pruned: tokens \[4, 32\)"):
        cache.lookup_sequences([3])
    assert cache.snapshot() == before
    out = cache.paged_attention(q, table, lens, sliding_window=8, sink_tokens=4)
    assert np.isfinite(out).all()


# -- heavy hitters -----------------------------------------------------------------


@pytest.mark.parametrize("kind_name", list(FLOAT_TYPES))
@pytest.mark.parametrize(
    "q_heads, tq, options",
    [
        (2, 1, {}),
        (8, 1, {"sliding_window": 30, "sink_tokens": 4}),
        (4, 3, {"logits_soft_cap": 5.0}),
        (8, 6, {"causal": False}),
    ],
)
def test_block_mass_matches_the_reference_and_holes_are_masked(
    kind_name: str, q_heads: int, tq: int, options: dict[str, Any]
) -> None:
    kind = element_type(kind_name)
    rng = np.random.default_rng(q_heads * 7 + tq)
    lens = [70, 3, 41, 0]
    keys = [rng.standard_normal((n, 2, 16)) * 2 for n in lens]
    values = [rng.standard_normal((n, 2, 16)) for n in lens]
    pool = build_paged_pool(keys, values, 4, kind, rng)
    table = pool.block_table.copy()
    table[0, [2, 5, 9]] = -1  # holes left by heavy-hitter pruning
    table[2, 3] = -1
    query = rng.standard_normal((len(lens), tq, q_heads, 16)).astype(np.float32)
    mass = np.full((len(lens), 2, table.shape[1]), np.nan, np.float32)
    out = kernel(
        query, pool.kv_pool[0], kind.code, table, pool.seq_lens,
        block_mass=mass, **options,
    )  # fmt: skip
    args = (query, pool.kv_pool[0], kind, table, pool.seq_lens)
    np.testing.assert_allclose(
        out,
        reference_paged_attention(*args, scale=0.25, **options),
        **(HALF_TOL if kind.is_half else F32_TOL),
    )
    want = reference_block_mass(*args, scale=0.25, **options)
    np.testing.assert_allclose(mass, want, rtol=1e-4, atol=1e-5)
    assert (mass[0, :, [2, 5, 9]] == 0).all()
    # Each (sequence, kv head) hands out one unit per query row that saw a key.
    rows = tq * q_heads // 2
    np.testing.assert_allclose(mass[:3].sum(axis=2), np.full((3, 2), rows), rtol=1e-5)


def test_heavy_hitters_keep_the_blocks_attention_weighs_most() -> None:
    """Queries that always look at one old block keep it; the budget holds."""
    block, window, sinks, budget = 4, 8, 4, 6
    cache = PagedKVCache(
        1, 1, 8, block, 512, num_blocks=16, window_tokens=window,
        sink_tokens=sinks, heavy_hitter_blocks=budget,
    )  # fmt: skip
    rng = np.random.default_rng(2)
    direction = np.zeros(8, np.float32)
    direction[0] = 1.0
    keys = rng.standard_normal((1, 40, 1, 8)).astype(np.float32) * 0.1
    keys[0, 12:16, 0] = 6 * direction  # block 3 is what queries look for
    cache.append_kv(keys, keys, [0])
    for _ in range(60):
        query = (4 * direction + rng.standard_normal(8) * 0.1).astype(np.float32)
        cache.paged_attention(query.reshape(1, 1, 1, 8), *cache.block_table([0]))
        x = rng.standard_normal((1, 1, 1, 8)).astype(np.float32) * 0.1
        cache.append_kv(x, x, [0])
        held = cache.blocks_of(0)
        assert int((held >= 0).sum()) <= budget
        assert held[0] >= 0 and held[3] >= 0, "the sink or the heavy block went"
        cache.check_invariants()
    assert cache.stats().blocks_pruned > 10
    # Attention over the holes equals attention over the kept tokens only.
    query = rng.standard_normal((1, 1, 2, 8)).astype(np.float32)
    table, lens = cache.block_table([0])
    got = cache.paged_attention(query, table, lens)
    want = reference_paged_attention(
        query, cache.kv_pool[0], cache.element_type, table, lens
    )
    np.testing.assert_allclose(got, want, **F32_TOL)


def test_bad_heavy_hitter_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="heavy_hitter_blocks=4 needs window_tokens"):
        PagedKVCache(1, 1, 4, 4, 64, num_blocks=4, heavy_hitter_blocks=4)
    with pytest.raises(ConfigError, match="heavy_hitter_blocks=3 is below the 5"):
        PagedKVCache(
            1, 1, 4, 4, 64, num_blocks=4, window_tokens=10, sink_tokens=1,
            heavy_hitter_blocks=3,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="heavy_hitter_blocks must be a positive"):
        PagedKVCache(
            1, 1, 4, 4, 64, num_blocks=4, window_tokens=10, heavy_hitter_blocks=0
        )


def _ones(tokens: int, value: float = 1.0, batch: int = 1) -> npt.NDArray[np.float32]:
    return np.full((batch, tokens, 1, 8), value, np.float32)


def test_a_reservation_whose_blocks_were_pruned_is_refused() -> None:
    # Reserve 12 tokens of sequence 0 in both layers and write layer 0; an
    # append then prunes the reservation's first block, which sequence 1
    # takes.  Writing layer 1 of the old reservation would land in sequence
    # 1's block: it is refused, and sequence 1 keeps its keys.
    cache = PagedKVCache(2, 1, 8, 4, 512, num_blocks=16, window_tokens=8)
    cache.append_kv_all_layers(np.stack([_ones(2)] * 2), np.stack([_ones(2)] * 2), [0])
    slots, _, _ = cache.reserve_slots([0], 12)
    cache.write_kv(_ones(12, 2.0), _ones(12, 2.0), slots, layer=0)
    cache.append_kv(_ones(1, 3.0), _ones(1, 3.0), [0], layer=0)  # prunes
    seven = np.stack([_ones(4, 7.0)] * 2)
    cache.append_kv_all_layers(seven, seven, [1])
    with pytest.raises(BlockTableError, match="reservation was revoked"):
        cache.write_kv(_ones(12, 2.0), _ones(12, 2.0), slots, layer=1)
    keys, _ = cache.lookup_sequences([1], layer=1)
    assert (keys[0, :, 0, 0] == 7.0).all()


def test_a_reservation_survives_frees_that_spare_its_blocks() -> None:
    cache = PagedKVCache(2, 1, 8, 4, 64, num_blocks=16)
    cache.append_kv_all_layers(np.stack([_ones(3)] * 2), np.stack([_ones(3)] * 2), [0])
    cache.fork(0, 1)  # shares sequence 0's block
    cache.append_kv_all_layers(np.stack([_ones(2)] * 2), np.stack([_ones(2)] * 2), [2])
    slots, _, _ = cache.reserve_slots([0], 1)
    cache.free_sequences([1, 2])  # neither takes a block of the reservation
    cache.write_kv(_ones(1, 5.0), _ones(1, 5.0), slots, layer=1)
    cache.free_sequence(0)
    with pytest.raises(BlockTableError, match="reservation was revoked"):
        cache.write_kv(_ones(1, 5.0), _ones(1, 5.0), slots, layer=0)


def test_matching_a_prefix_keeps_the_mass_of_blocks_others_hold() -> None:
    cache = PagedKVCache(
        1, 1, 8, 4, 512, "f32", num_blocks=32, window_tokens=8, sink_tokens=4,
        heavy_hitter_blocks=6, enable_prefix_caching=True,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((1, 24, 1, 8)).astype(np.float32)
    cache.append_kv(keys, keys, [0], token_ids=np.arange(24)[None])
    query = rng.standard_normal((1, 1, 1, 8)).astype(np.float32)
    for _ in range(3):
        cache.paged_attention(query, *cache.block_table([0]))
    blocks = cache.blocks_of(0)
    table = cache.sequences
    mass, queries = table.block_mass[blocks].copy(), table.block_queries[blocks].copy()
    assert (mass > 0).all() and (queries == 3).all()
    # Five full blocks shared, three tokens of the sixth copied.
    assert cache.match_prefix(1, np.arange(24)) == 23
    np.testing.assert_array_equal(table.block_mass[blocks], mass)
    np.testing.assert_array_equal(table.block_queries[blocks], queries)


def test_forked_siblings_prune_a_shared_block_together() -> None:
    # Both hold every block; pruning in one batch frees the first block for
    # the new one the append needs, as one at a time would.
    cache = PagedKVCache(1, 1, 8, 4, 512, num_blocks=5, window_tokens=8)
    cache.append_kv(_ones(16), _ones(16), [0])
    cache.fork(0, 1)
    cache.append_kv(_ones(1, batch=2), _ones(1, batch=2), [0, 1])
    assert cache.seq_len(0) == cache.seq_len(1) == 17
