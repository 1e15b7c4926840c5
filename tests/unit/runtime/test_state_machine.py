"""Random append/free/reset sequences against a plain Python model.

The model is a dict: seq id -> per layer, the list of (key, value) tokens
written.  After every step the cache must agree with it (round trip through
lookup) and the allocator's invariants must hold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llmir.errors import (
    OutOfBlocksError,
    SequenceError,
    SequenceTooLongError,
    UnknownSequenceError,
)
from llmir.runtime import PagedKVCache

L, H, D, B, MAX, NUM_BLOCKS = 3, 2, 4, 4, 12, 9
SEQ_IDS = st.integers(0, 5)
Token = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # f16 with small integer data: exact, so the comparison is equality,
        # and the encode/decode path is exercised.
        self.cache = PagedKVCache(L, H, D, B, MAX, "f16", num_blocks=NUM_BLOCKS)
        self.model: dict[int, list[list[Token]]] = {}
        self.counter = 0

    def _tokens(self, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
        n = int(np.prod(shape))
        data = (np.arange(n) + self.counter) % 2000 - 1000
        self.counter += n
        return data.reshape(shape).astype(np.float32)

    def _expected_error(
        self, ids: list[int], t: int, layer: int | None, reserve: bool = False
    ) -> type[Exception] | None:
        # The cache checks the whole batch for each rule in turn (uneven
        # layers, then length, then blocks), so the model does too.  A
        # reservation takes uneven layers as they are.
        if layer is None and not reserve:
            for s in ids:
                written = [len(x) for x in self.model.get(s, [[]])]
                if len(set(written)) > 1:
                    return SequenceError
        needed = 0
        for s in ids:
            layers = self.model.get(s, [[] for _ in range(L)])
            written = [len(x) for x in layers]
            length = max(written)
            end = (length if layer is None else written[layer]) + t
            if end > MAX:
                return SequenceTooLongError
            needed += -(-max(length, end) // B) - -(-length // B)
        used = sum(-(-max(len(x) for x in seq) // B) for seq in self.model.values())
        if needed > NUM_BLOCKS - used:
            return OutOfBlocksError
        return None

    @rule(
        ids=st.lists(SEQ_IDS, min_size=1, max_size=3, unique=True),
        t=st.integers(1, 5),
        layer=st.one_of(st.none(), st.integers(0, L - 1)),
    )
    def append(self, ids: list[int], t: int, layer: int | None) -> None:
        expected = self._expected_error(ids, t, layer)
        n_layers = L if layer is None else 1
        keys = self._tokens((n_layers, len(ids), t, H, D))
        values = -keys
        before = (self.cache.snapshot(), self.cache.kv_pool.tobytes())
        try:
            if layer is None:
                self.cache.append_kv_all_layers(keys, values, ids)
            else:
                self.cache.append_kv(keys[0], values[0], ids, layer=layer)
        except (SequenceError, OutOfBlocksError) as exc:
            assert expected is not None and isinstance(exc, expected), exc
            assert (self.cache.snapshot(), self.cache.kv_pool.tobytes()) == before
            return
        assert expected is None
        for b, s in enumerate(ids):
            seq = self.model.setdefault(s, [[] for _ in range(L)])
            for i, lay in enumerate(range(L) if layer is None else [layer]):
                seq[lay].extend((keys[i, b, p], values[i, b, p]) for p in range(t))

    @rule(
        ids=st.lists(SEQ_IDS, min_size=1, max_size=3, unique=True),
        t=st.integers(1, 3),
    )
    def append_step_layer_by_layer(self, ids: list[int], t: int) -> None:
        """One decode step, layer after layer: the cache's fast path for a
        repeated batch (layers > 0 reuse the slots of layer 0)."""
        for layer in range(L):
            self.append(ids, t, layer)

    @rule(
        ids=st.lists(SEQ_IDS, min_size=1, max_size=3, unique=True),
        t=st.integers(1, 3),
    )
    def reserve_then_write(self, ids: list[int], t: int) -> None:
        """One step as a reservation and per-layer writes: layer l of each
        sequence continues from its own written count, level or not."""
        expected = self._expected_error(ids, t, None, reserve=True)
        keys = self._tokens((L, len(ids), t, H, D))
        values = -keys
        before = (self.cache.snapshot(), self.cache.kv_pool.tobytes())
        try:
            slots, table, lens = self.cache.reserve_slots(ids, t)
        except (SequenceError, OutOfBlocksError) as exc:
            assert expected is not None and isinstance(exc, expected), exc
            assert (self.cache.snapshot(), self.cache.kv_pool.tobytes()) == before
            return
        assert expected is None
        for layer in range(L):
            self.cache.write_kv(keys[layer], values[layer], slots, layer)
        for b, s in enumerate(ids):
            seq = self.model.setdefault(s, [[] for _ in range(L)])
            for lay in range(L):
                seq[lay].extend((keys[lay, b, p], values[lay, b, p]) for p in range(t))
            assert lens[b] == max(len(x) for x in seq)
        assert (table >= 0).sum(axis=1).tolist() == [-(-int(n) // B) for n in lens]

    @rule(seq_id=SEQ_IDS)
    def free(self, seq_id: int) -> None:
        if seq_id in self.model:
            self.cache.free_sequence(seq_id)
            del self.model[seq_id]
        else:
            try:
                self.cache.free_sequence(seq_id)
            except UnknownSequenceError:
                return
            raise AssertionError("freeing an unknown sequence did not raise")

    @precondition(lambda self: len(self.model) > 2)
    @rule()
    def reset(self) -> None:
        self.cache.reset()
        self.model.clear()

    @invariant()
    def blocks_are_accounted_for(self) -> None:
        a = self.cache.allocator
        assert a.num_free + a.num_used == a.num_blocks
        holders = np.zeros(a.num_blocks, np.int32)
        for s in self.cache.seq_ids:
            blocks = self.cache.blocks_of(s)
            assert len(set(blocks.tolist())) == blocks.size
            holders[blocks] += 1
        # Nothing is shared yet: each block in at most one table, and its ref
        # count is exactly the number of tables holding it.
        assert holders.max(initial=0) <= 1
        assert np.array_equal(a.ref_counts(), holders)
        stats = self.cache.stats()
        assert stats.blocks_used == int((holders > 0).sum())

    @invariant()
    def contents_match_the_model(self) -> None:
        assert sorted(self.cache.seq_ids) == sorted(self.model)
        if not self.model:
            return
        ids = sorted(self.model)
        table, lens = self.cache.block_table(ids)
        for b, s in enumerate(ids):
            written = [len(x) for x in self.model[s]]
            assert lens[b] == max(written) == self.cache.seq_len(s)
            assert self.cache.layer_lens(s).tolist() == written
        for layer in range(L):
            keys, values = self.cache.lookup_kv(table, lens, layer, as_float32=True)
            for b, s in enumerate(ids):
                tokens = self.model[s][layer]
                if tokens:
                    assert np.array_equal(
                        keys[b, : len(tokens)], np.stack([k for k, _ in tokens])
                    )
                    assert np.array_equal(
                        values[b, : len(tokens)], np.stack([v for _, v in tokens])
                    )
                assert (keys[b, lens[b] :] == 0).all()


CacheMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None
)
TestCacheMachine = CacheMachine.TestCase
