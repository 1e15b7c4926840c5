"""Random traces of a pruning cache (attention sinks + window, or heavy
hitters within a block budget) against the same workload on a cache that
never prunes.

Two caches see every operation: `pruned` (window W, S sinks, prefix
caching, a swap tier, a pool too small to hold the sequences whole) and
`plain` (no pruning, room for everything).  Attention with a mask that
never reads a pruned token (window <= W, sinks <= S) must be bit-identical
between them; a mask that would read one is refused with a BlockTableError
that changes nothing.  After every step: the bookkeeping invariants hold,
no sequence holds more than ceil(S/B) + ceil(W/B) + 1 blocks after a
decode step (more after a chunk of T tokens, whose queries see W back), and
every kept token reads back as appended (appended whole, per layer, or
reserved and written layer by layer).  With heavy hitters (holes
anywhere outside the sinks and the window, attention skipping them) the
outputs are checked against the float64 reference over the kept tokens, and
the budget holds after every decode step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from llmir.errors import BlockTableError, OutOfBlocksError, SwapSpaceFullError
from llmir.runtime import PagedKVCache
from llmir.testing.reference import reference_paged_attention

L, H, D, B, MAX = 2, 2, 8, 4, 96
W, S = 6, 2


def bound(last_append: int) -> int:
    """The most blocks a sequence holds after appending `last_append` tokens:
    the sink blocks, and the window plus the new tokens (whose queries still
    see W tokens back), one block more for alignment.  Decode (1 token):
    ceil(S/B) + ceil(W/B) + 1."""
    return -(-S // B) + -(-(W + last_append - 1) // B) + 1


PRUNED_BLOCKS, PLAIN_BLOCKS, SWAP_BLOCKS = 14, 200, 8
BUDGET = 6  # heavy hitters: the sink block, the window's 3, and 2 more
SEQ_IDS = st.integers(0, 5)


class PruningMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lens: dict[int, int] = {}
        self.last_append: dict[int, int] = {}
        self.swapped: set[int] = set()
        self.rng = np.random.default_rng(0)
        self.pruned = PagedKVCache(
            L,
            H,
            D,
            B,
            MAX,
            num_blocks=PRUNED_BLOCKS,
            window_tokens=W,
            sink_tokens=S,
            enable_prefix_caching=True,
            swap_blocks=SWAP_BLOCKS,
        )
        self.plain = PagedKVCache(L, H, D, B, MAX, num_blocks=PLAIN_BLOCKS)
        self.heavy = False

    @initialize(heavy=st.booleans())
    def create(self, heavy: bool) -> None:
        self.heavy = heavy
        if heavy:
            self.pruned.close()
            self.pruned = PagedKVCache(
                L,
                H,
                D,
                B,
                MAX,
                num_blocks=PRUNED_BLOCKS,
                window_tokens=W,
                sink_tokens=S,
                heavy_hitter_blocks=BUDGET,
                enable_prefix_caching=True,
                swap_blocks=SWAP_BLOCKS,
            )

    def resident(self) -> list[int]:
        return sorted(s for s in self.lens if s not in self.swapped)

    def _state(self) -> tuple[Any, bytes]:
        return self.pruned.snapshot(), self.pruned.kv_pool.tobytes()

    @precondition(lambda self: len(self.lens) < 3)
    @rule(seq=SEQ_IDS, t=st.integers(1, 16))
    def start(self, seq: int, t: int) -> None:
        if seq in self.lens:
            return
        self._append([seq], t, per_layer=False)

    @precondition(lambda self: self.resident())
    @rule(
        data=st.data(),
        t=st.integers(1, 6),
        how=st.sampled_from(["whole step", "per layer", "reserved"]),
    )
    def grow(self, data: st.DataObject, t: int, how: str) -> None:
        ids = data.draw(
            st.lists(st.sampled_from(self.resident()), min_size=1, unique=True)
        )
        ids = [s for s in ids if self.lens[s] + t <= MAX]
        if ids:
            self._append(ids, t, how == "per layer", reserved=how == "reserved")

    def _append(
        self, ids: list[int], t: int, per_layer: bool, reserved: bool = False
    ) -> None:
        keys = self.rng.standard_normal((L, len(ids), t, H, D), np.float32)
        values = self.rng.standard_normal((L, len(ids), t, H, D), np.float32)
        tokens = self.rng.integers(0, 3, (len(ids), t))
        before = self._state()
        try:
            if reserved:  # one reservation, then a write per layer
                slots, _, _ = self.pruned.reserve_slots(ids, t)
                for layer in range(L):
                    self.pruned.write_kv(keys[layer], values[layer], slots, layer)
            elif per_layer:
                for layer in range(L):
                    self.pruned.append_kv(
                        keys[layer], values[layer], ids, layer, token_ids=tokens
                    )
            else:
                self.pruned.append_kv_all_layers(keys, values, ids, token_ids=tokens)
        except OutOfBlocksError:
            assert self._state() == before
            return
        self.plain.append_kv_all_layers(keys, values, ids)
        for seq in ids:
            self.lens[seq] = self.lens.get(seq, 0) + t
            self.last_append[seq] = t

    @precondition(lambda self: self.resident() and len(self.lens) < 4)
    @rule(data=st.data(), child=SEQ_IDS)
    def fork(self, data: st.DataObject, child: int) -> None:
        if child in self.lens:
            return
        parent = data.draw(st.sampled_from(self.resident()))
        self.pruned.fork(parent, child)
        self.plain.fork(parent, child)
        self.lens[child] = self.lens[parent]
        self.last_append[child] = self.last_append[parent]

    @precondition(lambda self: self.lens)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        ids = data.draw(
            st.lists(st.sampled_from(sorted(self.lens)), min_size=1, unique=True)
        )
        self.pruned.free_sequences(ids)
        self.plain.free_sequences(ids)
        for seq in ids:
            del self.lens[seq]
            self.swapped.discard(seq)

    @precondition(lambda self: self.resident())
    @rule(data=st.data())
    def swap_out(self, data: st.DataObject) -> None:
        ids = data.draw(
            st.lists(st.sampled_from(self.resident()), min_size=1, unique=True)
        )
        before = self._state()
        try:
            self.pruned.swap_out(ids)
        except SwapSpaceFullError:
            assert self._state() == before
            return
        self.swapped.update(ids)

    @precondition(lambda self: self.swapped)
    @rule(data=st.data())
    def swap_in(self, data: st.DataObject) -> None:
        ids = data.draw(
            st.lists(st.sampled_from(sorted(self.swapped)), min_size=1, unique=True)
        )
        before = self._state()
        try:
            self.pruned.swap_in(ids)
        except OutOfBlocksError:
            assert self._state() == before
            return
        self.swapped.difference_update(ids)

    @precondition(lambda self: self.resident())
    @rule(
        data=st.data(),
        q_len=st.integers(1, 4),
        window=st.integers(1, W + 3),
        sinks=st.integers(0, S + 2),
        layer=st.integers(0, L - 1),
    )
    def attention(
        self, data: st.DataObject, q_len: int, window: int, sinks: int, layer: int
    ) -> None:
        ids = data.draw(
            st.lists(st.sampled_from(self.resident()), min_size=1, unique=True)
        )
        query = self.rng.standard_normal((len(ids), q_len, 2 * H, D), np.float32)
        options: dict[str, Any] = {
            "sliding_window": window,
            "sink_tokens": sinks or None,
        }
        if self.heavy:
            # Holes anywhere: attention covers the kept tokens in the mask.
            table, lens = self.pruned.block_table(ids)
            got = self.pruned.paged_attention(query, table, lens, layer, **options)
            want = reference_paged_attention(
                query,
                self.pruned.kv_pool[layer],
                self.pruned.element_type,
                table,
                lens,
                scale=D**-0.5,
                sliding_window=window,
                sink_tokens=sinks,
            )
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            return
        # Would the mask read a token pruning gave back?
        reads_hole = False
        for seq in ids:
            begin, end = self.pruned.sequences.pruned_range(seq)
            first_read = self.lens[seq] - q_len - window + 1
            if begin < end and (first_read < end or sinks > begin):
                reads_hole = True
        table, lens = self.pruned.block_table(ids)
        before = self._state()
        if reads_hole:
            with pytest.raises(BlockTableError, match="padding"):
                self.pruned.paged_attention(query, table, lens, layer, **options)
            assert self._state() == before
            return
        got = self.pruned.paged_attention(query, table, lens, layer, **options)
        table, lens = self.plain.block_table(ids)
        want = self.plain.paged_attention(query, table, lens, layer, **options)
        np.testing.assert_array_equal(got, want)

    @invariant()
    def bookkeeping_holds(self) -> None:
        self.pruned.check_invariants()
        stats = self.pruned.stats()
        total = stats.blocks_used + stats.blocks_cached + stats.blocks_free
        assert total == PRUNED_BLOCKS
        assert stats.num_sequences == len(self.lens)

    @invariant()
    def each_sequence_stays_within_its_bound(self) -> None:
        for seq in self.resident():
            held = self.pruned.blocks_of(seq)
            most = bound(self.last_append[seq])
            if self.heavy:
                most = max(BUDGET, most)
            assert int((held >= 0).sum()) <= most, (seq, held.tolist())

    @invariant()
    def kept_tokens_read_back(self) -> None:
        for seq in self.resident():
            table, _ = self.pruned.block_table([seq])
            plain_table, _ = self.plain.block_table([seq])
            pruned = set(self.pruned.sequences.pruned_blocks(seq).tolist())
            assert all(table[0, j] == -1 for j in pruned)
            # Read the kept slots straight from both pools.
            for pos in range(self.lens[seq]):
                if pos // B in pruned:
                    continue
                a = self.pruned.kv_pool[:, table[0, pos // B], :, :, pos % B]
                b = self.plain.kv_pool[:, plain_table[0, pos // B], :, :, pos % B]
                np.testing.assert_array_equal(a, b)

    def teardown(self) -> None:
        if self.lens:
            self.pruned.free_sequences(sorted(self.lens))
        stats = self.pruned.stats()
        assert stats.blocks_used == 0, "freeing everything leaked blocks"
        assert stats.swap_blocks_used == 0, "freeing everything leaked tier slots"
        self.pruned.close()


PruningMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pruning_machine = pytest.mark.filterwarnings("error")(PruningMachine.TestCase)
