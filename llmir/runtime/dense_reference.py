"""A dense, obviously-correct stand-in for `PagedKVCache`, used to check whole
programs (`llmir-run --check`).

It shares nothing with the paged runtime but the storage rounding: every
sequence's keys and values are kept per layer as one growing float64 array
of the values the real cache would store (rounded through the storage kind),
and attention is a plain float64 softmax over them.  Running a program on
this cache and on the real one and comparing the float results checks the
allocator, the slot mapping, the copy kernels and the attention kernels in
one go, for any program.

Block tables are virtual: ids are handed out in order as sequences grow and
mean nothing but "block j of sequence s".  Outputs that expose physical block
ids (the append's block indices, the tables themselves) therefore differ from
the paged cache's and are not compared.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import SequenceError, SequenceTooLongError, UnknownSequenceError
from llmir.runtime.dtypes import StorageKind, decode, encode, storage_kind

Array = npt.NDArray[Any]


class DenseReferenceCache:
    """The subset of `PagedKVCache`'s interface that the interpreter uses."""

    device = "reference"

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        block_size: int,
        max_seq_len: int,
        dtype: str = "f32",
        **_: Any,
    ) -> None:
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.block_size = block_size
        self.max_seq_len = max_seq_len
        self.kind: StorageKind = storage_kind(dtype)
        # seq id -> per layer: [tokens, H, D] float64 keys and values
        self._keys: dict[int, list[Array]] = {}
        self._values: dict[int, list[Array]] = {}
        self._blocks: dict[int, list[int]] = {}
        self._owner: dict[int, tuple[int, int]] = {}  # block -> (seq, index)
        self._next_block = 0

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._keys

    def seq_len(self, seq_id: int) -> int:
        return max(k.shape[0] for k in self._keys[seq_id])

    def _stored(self, x: Array) -> Array:
        """The float64 values the real cache would hold for input `x`."""
        if x.dtype == np.uint16:  # already-encoded half bits
            return decode(x, self.kind).astype(np.float64)
        return decode(encode(np.asarray(x, np.float32), self.kind), self.kind).astype(
            np.float64
        )

    def append_kv(
        self, keys: Array, values: Array, seq_ids: Array, layer: int = 0
    ) -> Array:
        ids = [int(s) for s in seq_ids]
        if len(set(ids)) != len(ids):
            raise SequenceError(f"sequence ids {ids} list a sequence twice")
        for b, seq_id in enumerate(ids):
            if seq_id not in self._keys:
                empty = np.zeros((0, self.num_heads, self.head_dim))
                self._keys[seq_id] = [empty] * self.num_layers
                self._values[seq_id] = [empty] * self.num_layers
                self._blocks[seq_id] = []
            grown = self._keys[seq_id][layer].shape[0] + keys.shape[1]
            if grown > self.max_seq_len:
                raise SequenceTooLongError(
                    f"sequence {seq_id} would grow to {grown} tokens, "
                    f"max_seq_len is {self.max_seq_len}"
                )
            self._keys[seq_id][layer] = np.concatenate(
                [self._keys[seq_id][layer], self._stored(keys[b])]
            )
            self._values[seq_id][layer] = np.concatenate(
                [self._values[seq_id][layer], self._stored(values[b])]
            )
            blocks = self._blocks[seq_id]
            while len(blocks) * self.block_size < self.seq_len(seq_id):
                self._owner[self._next_block] = (seq_id, len(blocks))
                blocks.append(self._next_block)
                self._next_block += 1
        # Virtual block of each appended token.
        out = np.zeros(keys.shape[:2], np.int32)
        for b, seq_id in enumerate(ids):
            start = self._keys[seq_id][layer].shape[0] - keys.shape[1]
            for t in range(keys.shape[1]):
                out[b, t] = self._blocks[seq_id][(start + t) // self.block_size]
        return out

    def block_table(self, seq_ids: Array) -> tuple[Array, Array]:
        ids = [int(s) for s in seq_ids]
        for seq_id in ids:
            if seq_id not in self._keys:
                raise UnknownSequenceError(f"sequence {seq_id} is not in the cache")
        width = max([len(self._blocks[s]) for s in ids] + [0])
        table = np.full((len(ids), width), -1, np.int32)
        for b, seq_id in enumerate(ids):
            table[b, : len(self._blocks[seq_id])] = self._blocks[seq_id]
        lens = np.array([self.seq_len(s) for s in ids], np.int32)
        return table, lens

    def free_sequence(self, seq_id: int) -> None:
        for block in self._blocks.pop(seq_id):
            del self._owner[block]
        del self._keys[seq_id], self._values[seq_id]

    def _sequence(
        self, table_row: Array, length: int, layer: int
    ) -> tuple[Array, Array]:
        if length == 0:
            empty = np.zeros((0, self.num_heads, self.head_dim))
            return empty, empty
        seq_id, _ = self._owner[int(table_row[0])]
        return self._keys[seq_id][layer][:length], self._values[seq_id][layer][:length]

    def lookup_kv(
        self,
        block_table: Array,
        seq_lens: Array,
        layer: int = 0,
        *,
        as_float32: bool = False,
        out: tuple[Array, Array] | None = None,
    ) -> tuple[Array, Array]:
        batch = block_table.shape[0]
        width = out[0].shape[1] if out is not None else int(max(seq_lens, default=0))
        keys = np.zeros((batch, width, self.num_heads, self.head_dim), np.float32)
        values = np.zeros_like(keys)
        for b in range(batch):
            k, v = self._sequence(block_table[b], int(seq_lens[b]), layer)
            keys[b, : k.shape[0]] = k
            values[b, : v.shape[0]] = v
        if out is not None:
            out[0][...] = keys
            out[1][...] = values
            return out
        return keys, values

    def stats(self) -> str:
        tokens = sum(self.seq_len(s) for s in self._keys)
        return f"dense reference: {len(self._keys)} sequences, {tokens} tokens"


def dense_attention(
    query: Array,
    cache: DenseReferenceCache,
    block_table: Array,
    seq_lens: Array,
    layer: int = 0,
    scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> Array:
    """Float64 softmax attention over the dense sequences of `cache`, with the
    semantics of `llmir.runtime.attention.paged_attention`."""
    q = np.asarray(query, np.float64)
    batch, q_len, q_heads, head_dim = q.shape
    group = q_heads // cache.num_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = np.zeros_like(q)
    for b in range(batch):
        length = int(seq_lens[b])
        k, v = cache._sequence(block_table[b], length, layer)  # pyright: ignore[reportPrivateUsage]
        for t in range(q_len):
            position = length - q_len + t
            end = min(position + 1, length) if causal else length
            start = (
                0 if sliding_window is None else max(position + 1 - sliding_window, 0)
            )
            if end <= start:
                continue
            for h in range(q_heads):
                kv_head = h // group
                logits = scale * (k[start:end, kv_head] @ q[b, t, h])
                if logits_soft_cap is not None:
                    logits = logits_soft_cap * np.tanh(logits / logits_soft_cap)
                weights = np.exp(logits - logits.max())
                out[b, t, h] = weights @ v[start:end, kv_head] / weights.sum()
    return out.astype(np.float16 if query.dtype == np.float16 else np.float32)
