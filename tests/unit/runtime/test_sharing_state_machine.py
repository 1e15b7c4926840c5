"""Random traces with prefix caching, forks and evictions against the same
workload run without sharing.

Two caches see every operation: `shared` (prefix caching on, a pool small
enough that cached blocks are evicted) and `plain` (no sharing, room for
everything).  Keys and values are a function of the token prefix
(`llmir.testing.prefix_kv`), so whatever `shared` reuses, copies or
recomputes, every attention output must be bit-identical to `plain`'s, and
every stored token must be the one a fresh computation gives.  Sequences
are swapped out to the file tier and back in at random: a swapped sequence
keeps its data bit for bit.  After each
step the bookkeeping invariants hold: free + cached + used == total, a
block's ref count is the number of tables holding it, every indexed block
holds the keys and values of the prefix its hash stands for.
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

from llmir.errors import OutOfBlocksError, SwapSpaceFullError
from llmir.runtime import PagedKVCache
from llmir.testing import prefix_kv

L, H, D, B, MAX = 2, 2, 8, 4, 48
SHARED_BLOCKS, PLAIN_BLOCKS, SWAP_BLOCKS = 12, 96, 10
VOCAB = 3  # few distinct tokens: prompts share prefixes often
SEQ_IDS = st.integers(0, 7)
PROMPTS = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=18)


class SharingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[int, list[int]] = {}
        self.swapped: set[int] = set()
        self.rng = np.random.default_rng(0)
        self.shared = PagedKVCache(L, H, D, B, MAX, num_blocks=SHARED_BLOCKS)
        self.plain = PagedKVCache(L, H, D, B, MAX, num_blocks=PLAIN_BLOCKS)

    @initialize(policy=st.sampled_from(["lru", "priority"]))
    def create(self, policy: str) -> None:
        self.shared = PagedKVCache(
            L,
            H,
            D,
            B,
            MAX,
            num_blocks=SHARED_BLOCKS,
            enable_prefix_caching=True,
            eviction=policy,
            swap_blocks=SWAP_BLOCKS,
        )

    def resident(self) -> list[int]:
        return sorted(s for s in self.tokens if s not in self.swapped)

    def _state(self) -> tuple[Any, bytes]:
        return self.shared.snapshot(), self.shared.kv_pool.tobytes()

    def _append(
        self, seq_ids: list[int], new: list[list[int]], per_layer: bool
    ) -> bool:
        """Append the `new` tokens of each sequence to both caches (the
        shared one with their ids); False, with `shared` unchanged, when its
        pool is exhausted."""
        t = len(new[0])
        keys = np.empty((L, len(seq_ids), t, H, D), np.float32)
        values = np.empty_like(keys)
        for b, seq in enumerate(seq_ids):
            history = self.tokens.get(seq, []) + new[b]
            keys[:, b], values[:, b] = prefix_kv(history, L, H, D, len(history) - t)
        before = self._state()
        try:
            if per_layer:
                for layer in range(L):
                    self.shared.append_kv(
                        keys[layer], values[layer], seq_ids, layer, token_ids=new
                    )
            else:
                self.shared.append_kv_all_layers(keys, values, seq_ids, token_ids=new)
        except OutOfBlocksError:
            # Only the first layer can run out: the others fill its blocks.
            assert self._state() == before
            return False
        self.plain.append_kv_all_layers(keys, values, seq_ids)
        for b, seq in enumerate(seq_ids):
            self.tokens.setdefault(seq, []).extend(new[b])
        return True

    @rule(seq=SEQ_IDS, prompt=PROMPTS, match=st.booleans(), priority=st.integers(0, 2))
    def request(self, seq: int, prompt: list[int], match: bool, priority: int) -> None:
        if seq in self.tokens:
            return
        reused = 0
        if match:
            before = self.shared.stats().prefix_hit_tokens
            reused = self.shared.match_prefix(seq, prompt)
            assert 0 <= reused < len(prompt)
            assert self.shared.stats().prefix_hit_tokens == before + reused
            assert self.shared.seq_len(seq) == reused
            self.shared.set_priority(seq, priority)
            # The unshared run computes the reused tokens too.
            keys, values = prefix_kv(prompt[:reused], L, H, D)
            self.plain.append_kv_all_layers(keys[:, None], values[:, None], [seq])
            self.tokens[seq] = prompt[:reused]
        if not self._append([seq], [prompt[reused:]], per_layer=False) and match:
            # Out of blocks after matching: give the matched start back.
            self.shared.free_sequence(seq)
            if seq in self.plain:
                self.plain.free_sequence(seq)
            del self.tokens[seq]

    @precondition(lambda self: self.resident())
    @rule(data=st.data(), t=st.integers(1, 3), per_layer=st.booleans())
    def decode(self, data: st.DataObject, t: int, per_layer: bool) -> None:
        live = self.resident()
        ids = data.draw(st.lists(st.sampled_from(live), min_size=1, unique=True))
        ids = [s for s in ids if len(self.tokens[s]) + t <= MAX]
        if not ids:
            return
        new = [self.rng.integers(0, VOCAB, t).tolist() for _ in ids]
        self._append(ids, new, per_layer)

    @precondition(lambda self: self.resident())
    @rule(data=st.data(), child=SEQ_IDS)
    def fork(self, data: st.DataObject, child: int) -> None:
        if child in self.tokens:
            return
        parent = data.draw(st.sampled_from(self.resident()))
        used = self.shared.stats().blocks_used
        self.shared.fork(parent, child)
        assert self.shared.stats().blocks_used == used, "fork copied a block"
        keys, values = prefix_kv(self.tokens[parent], L, H, D)
        self.plain.append_kv_all_layers(keys[:, None], values[:, None], [child])
        self.tokens[child] = list(self.tokens[parent])

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        ids = data.draw(
            st.lists(st.sampled_from(sorted(self.tokens)), min_size=1, unique=True)
        )
        self.shared.free_sequences(ids)
        self.plain.free_sequences(ids)
        for seq in ids:
            del self.tokens[seq]
            self.swapped.discard(seq)

    @precondition(lambda self: self.resident())
    @rule(data=st.data())
    def swap_out(self, data: st.DataObject) -> None:
        ids = data.draw(
            st.lists(st.sampled_from(self.resident()), min_size=1, unique=True)
        )
        before = self._state()
        try:
            self.shared.swap_out(ids)
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
            self.shared.swap_in(ids)
        except OutOfBlocksError:
            assert self._state() == before
            return
        self.swapped.difference_update(ids)

    @precondition(lambda self: self.resident())
    @rule(data=st.data(), q_len=st.integers(1, 3), layer=st.integers(0, L - 1))
    def attention_matches(self, data: st.DataObject, q_len: int, layer: int) -> None:
        ids = data.draw(
            st.lists(st.sampled_from(self.resident()), min_size=1, unique=True)
        )
        query = self.rng.standard_normal((len(ids), q_len, 2 * H, D), np.float32)
        outputs = []
        for cache in (self.shared, self.plain):
            table, lens = cache.block_table(ids)
            outputs.append(cache.paged_attention(query, table, lens, layer))
        np.testing.assert_array_equal(outputs[0], outputs[1])

    @invariant()
    def bookkeeping_holds(self) -> None:
        self.shared.check_invariants()
        stats = self.shared.stats()
        assert (
            stats.blocks_used + stats.blocks_cached + stats.blocks_free == SHARED_BLOCKS
        )
        assert stats.num_sequences == len(self.tokens)
        assert stats.swapped_sequences == len(self.swapped)

    @invariant()
    def stored_tokens_are_fresh(self) -> None:
        """Every resident sequence reads back the K/V of its own tokens."""
        ids = self.resident()
        if not ids:
            return
        table, lens = self.shared.block_table(ids)
        assert lens.tolist() == [len(self.tokens[s]) for s in ids]
        for layer in range(L):
            keys, values = self.shared.lookup_kv(table, lens, layer)
            for b, seq in enumerate(ids):
                want_k, want_v = prefix_kv(self.tokens[seq], L, H, D)
                n = len(self.tokens[seq])
                np.testing.assert_array_equal(keys[b, :n], want_k[layer])
                np.testing.assert_array_equal(values[b, :n], want_v[layer])

    @invariant()
    def indexed_blocks_hold_their_prefix(self) -> None:
        prefix = self.shared.sequences.prefix
        assert prefix is not None
        pool = self.shared.kv_pool
        for block in prefix.indexed_blocks():
            chain = prefix.chain_tokens(block)
            if chain is None:
                continue
            keys, values = prefix_kv(chain, L, H, D, len(chain) - B)
            # pool [L, blocks, H, 2, B, D]; keys [L, B, H, D]
            np.testing.assert_array_equal(pool[:, block, :, 0], keys.swapaxes(1, 2))
            np.testing.assert_array_equal(pool[:, block, :, 1], values.swapaxes(1, 2))

    def teardown(self) -> None:
        if self.tokens:
            self.shared.free_sequences(sorted(self.tokens))
        stats = self.shared.stats()
        assert stats.blocks_used == 0, "freeing everything leaked blocks"
        assert stats.swap_blocks_used == 0, "freeing everything leaked tier slots"
        self.shared.close()
        assert stats.blocks_cached + stats.blocks_free == SHARED_BLOCKS


SharingMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_sharing_machine = pytest.mark.filterwarnings("error")(SharingMachine.TestCase)
