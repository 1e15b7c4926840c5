"""`DenseReferenceCache`: a dense, obviously correct implementation of the
`KVCache` protocol, used to check whole programs (``llmir-run --check``).

It shares nothing with the paged runtime but the element type's rounding and
the argument checks: every sequence's keys and values are kept per layer as
one growing float64 array of the values the real cache would store (rounded
through the element type), and attention is a plain float64 softmax over
them.  Running a program on this cache and on `PagedKVCache` and comparing
the float results checks the allocator, the slot mapping, the copy kernels
and the attention kernels in one go, for any program.

Block ids are virtual: they are handed out in order as sequences grow and
mean nothing but "block j of sequence s".  Outputs that expose physical
block ids (the append's block indices, the tables themselves) therefore
differ from the paged cache's and are not compared.

Sharing is modelled without blocks: `fork_sequences` copies the parent's
arrays, and prefix matching is that of an unbounded cache.  Every sequence,
live or freed, offers the tokens of its blocks that are full in every layer
with known ids (as `PagedKVCache` indexes them); a prompt matches its
longest common start with any of them, at most its length minus one.  A
paged cache matches as much while its pool has room (no evictions, a free
block for a partial match); under pressure it matches less, never more.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import (
    BlockTableError,
    ConfigError,
    DTypeError,
    SequenceError,
    SequenceSwappedError,
    SequenceTooLongError,
    ShapeError,
    SwapSpaceFullError,
    UnknownSequenceError,
)
from llmir.runtime.dtypes import element_type
from llmir.runtime.geometry import PAD_BLOCK, CacheGeometry
from llmir.runtime.options import CacheOptions
from llmir.runtime.protocol import CacheStats
from llmir.runtime.validation import (
    check_attention_options,
    check_layer,
    check_prompts,
    check_query,
    check_seq_ids,
    check_token_ids,
    check_unique,
    validate_block_table,
)

Array = npt.NDArray[Any]
IntArray = npt.NDArray[np.int32]


class DenseReferenceCache:
    """The `KVCache` protocol over dense float64 arrays."""

    device = "cpu"

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        block_size: int,
        max_seq_len: int,
        dtype: object = "f32",
        *,
        num_blocks: int | None = None,
        enable_prefix_caching: bool = False,
        swap_blocks: int = 0,
    ) -> None:
        options = CacheOptions(enable_prefix_caching, swap_blocks=swap_blocks)
        self._prefix_caching = options.prefix_caching
        self._swap_blocks = options.swap_blocks
        self._swapped: set[int] = set()  # data stays where it is
        self._geometry = CacheGeometry(
            element_type(dtype),
            num_layers,
            num_heads,
            head_dim,
            block_size,
            max_seq_len,
        )
        self._num_blocks = (
            self._geometry.max_blocks_per_seq if num_blocks is None else num_blocks
        )
        # seq id -> per layer: [tokens, H, D] float64 keys and values
        self._keys: dict[int, list[Array]] = {}
        self._values: dict[int, list[Array]] = {}
        self._blocks: dict[int, list[int]] = {}
        self._owner: dict[int, int] = {}  # virtual block -> sequence
        self._next_block = 0
        # Prefix caching: token id per position (-1 unknown) of live
        # sequences, and the matchable part of freed ones.
        self._tokens: dict[int, list[int]] = {}
        self._freed: list[tuple[list[int], list[Array], list[Array]]] = []
        self._queries = self._query_tokens = self._hit_tokens = 0

    @classmethod
    def from_geometry(
        cls,
        geometry: CacheGeometry,
        num_blocks: int | None = None,
        options: CacheOptions | None = None,
    ) -> DenseReferenceCache:
        prefix_caching = options is not None and options.prefix_caching
        swap_blocks = options.swap_blocks if options is not None else 0
        return cls(
            geometry.num_layers,
            geometry.num_heads,
            geometry.head_dim,
            geometry.block_size,
            geometry.max_seq_len,
            geometry.element_type,
            num_blocks=num_blocks,
            enable_prefix_caching=prefix_caching,
            swap_blocks=swap_blocks,
        )

    @property
    def geometry(self) -> CacheGeometry:
        return self._geometry

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._keys

    def seq_len(self, seq_id: int) -> int:
        if seq_id not in self._keys:
            raise UnknownSequenceError(f"unknown sequence id {seq_id!r}")
        return max(k.shape[0] for k in self._keys[seq_id])

    # -- append ----------------------------------------------------------------

    def _stored(self, x: Array) -> Array:
        """The float64 values the real cache would hold for input `x`."""
        element = self._geometry.element_type
        if element.quant is not None:
            # The reference of a quantized cache is the unquantized run: what
            # quantization costs is what `llmir-run --check` reports.
            return x.astype(np.float64)
        if x.dtype != np.float32:  # already in the stored form
            raw = x.view(np.uint16) if x.dtype == np.float16 else x
            return element.decode(raw).astype(np.float64)
        return element.decode(element.encode(x)).astype(np.float64)

    def _checked(self, keys: Any, values: Any, seq_ids: Any, rank: int) -> list[int]:
        k, v = np.asarray(keys), np.asarray(values)
        g = self._geometry
        if (
            k.ndim != rank
            or k.shape != v.shape
            or k.shape[-2:]
            != (
                g.num_heads,
                g.head_dim,
            )
        ):
            raise ShapeError(f"keys {k.shape} / values {v.shape} do not fit {g}")
        accepted = (np.dtype(np.float32), *g.element_type.raw_input_dtypes)
        if k.dtype not in accepted or v.dtype != k.dtype:
            raise DTypeError(f"keys {k.dtype} / values {v.dtype} not accepted")
        ids: list[int] = check_seq_ids(seq_ids).tolist()
        check_unique(ids)
        if len(ids) != k.shape[-4]:
            raise ShapeError(f"{len(ids)} sequence ids for a batch of {k.shape[-4]}")
        return ids

    def _append_layer(
        self,
        k: Array,
        v: Array,
        ids: list[int],
        layer: int,
        token_ids: Array | None = None,
    ) -> None:
        g = self._geometry
        self._check_resident(ids)
        for seq_id in ids:
            written = self._keys[seq_id][layer].shape[0] if seq_id in self._keys else 0
            if written + k.shape[1] > g.max_seq_len:
                raise SequenceTooLongError(
                    f"sequence {seq_id} would grow to {written + k.shape[1]} "
                    f"tokens, max_seq_len is {g.max_seq_len}"
                )
        for b, seq_id in enumerate(ids):
            if seq_id not in self._keys:
                empty = np.zeros((0, g.num_heads, g.head_dim))
                self._keys[seq_id] = [empty] * g.num_layers
                self._values[seq_id] = [empty] * g.num_layers
                self._blocks[seq_id] = []
                self._tokens[seq_id] = []
            start = self._keys[seq_id][layer].shape[0]
            self._record(seq_id, start, k.shape[1], token_ids, b)
            self._keys[seq_id][layer] = np.concatenate(
                [self._keys[seq_id][layer], self._stored(k[b])]
            )
            self._values[seq_id][layer] = np.concatenate(
                [self._values[seq_id][layer], self._stored(v[b])]
            )
            self._grow_blocks(seq_id)

    def _indices(self, ids: list[int], layer: int, tokens: int) -> IntArray:
        """Virtual block of each token just appended to `layer`."""
        out = np.zeros((len(ids), tokens), np.int32)
        for b, seq_id in enumerate(ids):
            start = self._keys[seq_id][layer].shape[0] - tokens
            for t in range(tokens):
                out[b, t] = self._blocks[seq_id][
                    (start + t) // self._geometry.block_size
                ]
        return out

    def _record(
        self, seq_id: int, start: int, count: int, token_ids: Array | None, row: int
    ) -> None:
        """Remember the ids of positions ``[start, start + count)``."""
        tokens = self._tokens[seq_id]
        if len(tokens) < start + count:
            tokens.extend([-1] * (start + count - len(tokens)))
        if token_ids is not None and self._prefix_caching:
            tokens[start : start + count] = token_ids[row].tolist()

    def append_kv(
        self,
        keys: Any,
        values: Any,
        seq_ids: Any,
        layer: int = 0,
        *,
        token_ids: Any = None,
    ) -> IntArray:
        layer = check_layer(layer, self._geometry.num_layers)
        ids = self._checked(keys, values, seq_ids, 4)
        k, v = np.asarray(keys), np.asarray(values)
        tids = None if token_ids is None else check_token_ids(token_ids, *k.shape[:2])
        if not ids or k.shape[1] == 0:
            return np.zeros(k.shape[:2], np.int32)
        self._append_layer(k, v, ids, layer, tids)
        return self._indices(ids, layer, k.shape[1])

    def append_kv_all_layers(
        self, keys: Any, values: Any, seq_ids: Any, *, token_ids: Any = None
    ) -> IntArray:
        ids = self._checked(keys, values, seq_ids, 5)
        k, v = np.asarray(keys), np.asarray(values)
        tids = None if token_ids is None else check_token_ids(token_ids, *k.shape[1:3])
        if not ids or k.shape[2] == 0:
            return np.zeros(k.shape[1:3], np.int32)
        for seq_id in ids:
            if (
                seq_id in self._keys
                and len({a.shape[0] for a in self._keys[seq_id]}) > 1
            ):
                raise SequenceError(f"sequence {seq_id} has a step half-appended")
        for layer in range(self._geometry.num_layers):
            self._append_layer(k[layer], v[layer], ids, layer, tids)
        return self._indices(ids, 0, k.shape[2])

    # -- reserved steps --------------------------------------------------------------

    def reserve_slots(
        self, seq_ids: Any, num_tokens: int, *, require_level: bool = False
    ) -> tuple[IntArray, IntArray, IntArray]:
        """Each layer of each sequence grows by `num_tokens` zero rows (to be
        written by `write_kv`); slots name (virtual block, offset)."""
        g = self._geometry
        ids: list[int] = check_seq_ids(seq_ids).tolist()
        check_unique(ids)
        self._check_resident(ids)
        for seq_id in ids if require_level else ():
            per_layer = [k.shape[0] for k in self._keys.get(seq_id, [])]
            if per_layer and min(per_layer) != max(per_layer):
                raise SequenceError(
                    f"sequence {seq_id} has a step half-appended (tokens per "
                    f"layer: {per_layer}): llm.reserve_slots reserves whole "
                    "steps; finish the step first"
                )
        for seq_id in ids:
            have = self._keys[seq_id][0].shape[0] if seq_id in self._keys else 0
            longest = self.seq_len(seq_id) if seq_id in self._keys else 0
            if max(have, longest) + num_tokens > g.max_seq_len:
                raise SequenceTooLongError(
                    f"sequence {seq_id} would grow to {longest + num_tokens} tokens, "
                    f"max_seq_len is {g.max_seq_len}"
                )
        slots = np.zeros((g.num_layers, len(ids), num_tokens), np.int32)
        for b, seq_id in enumerate(ids):
            if seq_id not in self._keys:
                empty = [np.zeros((0, g.num_heads, g.head_dim))] * g.num_layers
                self._start(seq_id, empty, empty)
                self._tokens[seq_id] = []
            starts = [k.shape[0] for k in self._keys[seq_id]]
            pad = np.zeros((num_tokens, g.num_heads, g.head_dim))
            for layer in range(g.num_layers):
                self._keys[seq_id][layer] = np.concatenate(
                    [self._keys[seq_id][layer], pad]
                )
                self._values[seq_id][layer] = np.concatenate(
                    [self._values[seq_id][layer], pad]
                )
            self._grow_blocks(seq_id)
            self._record(seq_id, 0, self.seq_len(seq_id), None, b)  # ids unknown
            blocks = self._blocks[seq_id]
            for layer, start in enumerate(starts):
                for t in range(num_tokens):
                    p = start + t
                    slots[layer, b, t] = (
                        blocks[p // g.block_size] * g.block_size + p % g.block_size
                    )
        table, lens = self.block_table(ids)
        return slots, table, lens

    def write_kv(self, keys: Any, values: Any, slots: Any, layer: int = 0) -> None:
        g = self._geometry
        layer = check_layer(layer, g.num_layers)
        k, v = np.asarray(keys), np.asarray(values)
        mapping = np.asarray(slots)
        if mapping.ndim == 3:
            mapping = mapping[layer]
        if k.shape != v.shape or mapping.shape != k.shape[:2]:
            raise ShapeError(f"keys {k.shape} / slots {mapping.shape} disagree")
        stored_k, stored_v = self._stored(k), self._stored(v)
        for b in range(k.shape[0]):
            for t in range(k.shape[1]):
                block, offset = divmod(int(mapping[b, t]), g.block_size)
                if block not in self._owner:
                    raise BlockTableError(f"slot {int(mapping[b, t])} is not reserved")
                seq_id = self._owner[block]
                p = self._blocks[seq_id].index(block) * g.block_size + offset
                self._keys[seq_id][layer][p] = stored_k[b, t]
                self._values[seq_id][layer][p] = stored_v[b, t]

    def _grow_blocks(self, seq_id: int) -> None:
        blocks = self._blocks[seq_id]
        while len(blocks) * self._geometry.block_size < self.seq_len(seq_id):
            self._owner[self._next_block] = seq_id
            blocks.append(self._next_block)
            self._next_block += 1

    # -- sharing -------------------------------------------------------------------

    def _start(self, seq_id: int, keys: list[Array], values: list[Array]) -> None:
        """A new sequence holding `keys`/`values` per layer."""
        self._keys[seq_id] = [k.copy() for k in keys]
        self._values[seq_id] = [v.copy() for v in values]
        self._blocks[seq_id] = []
        self._grow_blocks(seq_id)

    def fork_sequences(self, parents: Any, children: Any) -> None:
        parent_ids: list[int] = check_seq_ids(parents).tolist()
        child_ids: list[int] = check_seq_ids(children).tolist()
        if len(parent_ids) != len(child_ids):
            raise ShapeError(f"{len(parent_ids)} parents for {len(child_ids)} children")
        check_unique(child_ids)
        self._check_resident(parent_ids)
        for parent, child in zip(parent_ids, child_ids, strict=True):
            if parent not in self._keys:
                raise UnknownSequenceError(f"unknown sequence id {parent!r}")
            if child in self._keys or child in parent_ids:
                raise SequenceError(f"cannot fork into sequence {child}")
            if len({a.shape[0] for a in self._keys[parent]}) > 1:
                raise SequenceError(f"sequence {parent} has a step half-appended")
        for parent, child in zip(parent_ids, child_ids, strict=True):
            self._start(child, self._keys[parent], self._values[parent])
            self._tokens[child] = list(self._tokens[parent])

    def _matchable(self, seq_id: int) -> list[int]:
        """The ids of the blocks a paged cache would have indexed."""
        g = self._geometry
        full = min(k.shape[0] for k in self._keys[seq_id]) // g.block_size
        tokens = self._tokens[seq_id][: full * g.block_size]
        known = tokens.index(-1) if -1 in tokens else len(tokens)
        return tokens[: known // g.block_size * g.block_size]

    def match_prefixes(self, seq_ids: Any, token_ids: Any) -> IntArray:
        ids: list[int] = check_seq_ids(seq_ids).tolist()
        prompts, lens = check_prompts(token_ids, len(ids))
        if not self._prefix_caching:
            raise ConfigError("prefix matching needs enable_prefix_caching=True")
        check_unique(ids)
        for seq_id in ids:
            if seq_id in self._keys:
                raise SequenceError(f"sequence {seq_id} exists")
        g = self._geometry
        found = np.zeros(len(ids), np.int32)
        for i, seq_id in enumerate(ids):
            prompt = prompts[i, : int(lens[i])].tolist()
            limit = min(len(prompt) - 1, g.max_seq_len)
            sources = [
                (self._matchable(s), self._keys[s], self._values[s]) for s in self._keys
            ] + self._freed
            best, best_keys, best_values = 0, None, None
            for tokens, keys, values in sources:
                n = _common_prefix(tokens, prompt, limit)
                if n > best:
                    best, best_keys, best_values = n, keys, values
            empty = np.zeros((0, g.num_heads, g.head_dim))
            keys = (
                [k[:best] for k in best_keys] if best_keys else [empty] * g.num_layers
            )
            values = (
                [v[:best] for v in best_values]
                if best_values
                else [empty] * g.num_layers
            )
            self._start(seq_id, keys, values)
            self._tokens[seq_id] = prompt[:best]
            self._queries += 1
            self._query_tokens += len(prompt)
            self._hit_tokens += best
            found[i] = best
        return found

    # -- tables and reads --------------------------------------------------------

    def block_table(self, seq_ids: Any) -> tuple[IntArray, IntArray]:
        ids: list[int] = check_seq_ids(seq_ids).tolist()
        for seq_id in ids:
            if seq_id not in self._keys:
                raise UnknownSequenceError(f"unknown sequence id {seq_id!r}")
        self._check_resident(ids)
        width = max([len(self._blocks[s]) for s in ids] + [0])
        table = np.full((len(ids), width), PAD_BLOCK, np.int32)
        for b, seq_id in enumerate(ids):
            table[b, : len(self._blocks[seq_id])] = self._blocks[seq_id]
        lens = np.array([self.seq_len(s) for s in ids], np.int32)
        return table, lens

    def _sequence(
        self, table_row: Array, length: int, layer: int
    ) -> tuple[Array, Array]:
        if length == 0:
            empty = np.zeros((0, self._geometry.num_heads, self._geometry.head_dim))
            return empty, empty
        seq_id = self._owner[int(table_row[0])]
        return self._keys[seq_id][layer][:length], self._values[seq_id][layer][:length]

    def _table(self, block_table: Any, seq_lens: Any) -> tuple[IntArray, IntArray]:
        checked = validate_block_table(
            block_table,
            seq_lens,
            block_size=self._geometry.block_size,
            num_blocks=max(self._next_block, 1),
            max_seq_len=self._geometry.max_seq_len,
        )
        return checked.table, checked.lens

    def lookup_kv(
        self,
        block_table: Any,
        seq_lens: Any,
        layer: int = 0,
        *,
        as_float32: bool = False,
        out: tuple[Any, Any] | None = None,
    ) -> tuple[Array, Array]:
        layer = check_layer(layer, self._geometry.num_layers)
        table, lens = self._table(block_table, seq_lens)
        g = self._geometry
        width = out[0].shape[1] if out is not None else int(max(lens, default=0))
        shape = (table.shape[0], width, g.num_heads, g.head_dim)
        keys = np.zeros(shape, g.element_type.out_dtype(as_float32))
        values = np.zeros_like(keys)
        for b in range(table.shape[0]):
            k, v = self._sequence(table[b], int(lens[b]), layer)
            keys[b, : k.shape[0]] = k
            values[b, : v.shape[0]] = v
        if out is not None:
            out[0][...] = keys
            out[1][...] = values
            return out
        return keys, values

    def paged_attention(
        self,
        query: Any,
        block_table: Any,
        seq_lens: Any,
        layer: int = 0,
        *,
        scale: float | None = None,
        causal: bool = True,
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
        sink_tokens: int | None = None,
        out: Any = None,
    ) -> Array:
        """Float64 softmax attention over the dense sequences, with the
        semantics of `llmir.runtime.attention`."""
        g = self._geometry
        layer = check_layer(layer, g.num_layers)
        table, lens = self._table(block_table, seq_lens)
        q_in = np.asarray(query)
        check_query(q_in.shape, q_in.dtype, table.shape[0], g.num_heads, g.head_dim)
        options = check_attention_options(
            g.head_dim, scale, causal, sliding_window, logits_soft_cap, sink_tokens
        )
        q = q_in.astype(np.float64)
        batch, q_len, q_heads, _ = q.shape
        group = q_heads // g.num_heads
        result = np.zeros_like(q)
        for b in range(batch):
            length = int(lens[b])
            k, v = self._sequence(table[b], length, layer)
            for t in range(q_len):
                position = length - q_len + t
                end = min(position + 1, length) if options.causal else length
                start = 0
                if options.sliding_window:
                    start = max(position + 1 - options.sliding_window, 0)
                # The sinks below the window, then the window.
                seen = np.r_[0 : min(options.sink_tokens, start, end), start:end]
                if seen.size == 0:
                    continue
                for h in range(q_heads):
                    logits = options.scale * (k[seen, h // group] @ q[b, t, h])
                    if options.logits_soft_cap:
                        cap = options.logits_soft_cap
                        logits = cap * np.tanh(logits / cap)
                    weights = np.exp(logits - logits.max())
                    result[b, t, h] = weights @ v[seen, h // group] / weights.sum()
        converted = result.astype(q_in.dtype)
        if out is not None:
            out[...] = converted
            return out
        return converted

    # -- free ----------------------------------------------------------------------

    def free_sequences(self, seq_ids: Any, *, priority: int | None = None) -> None:
        ids: list[int] = check_seq_ids(seq_ids).tolist()
        check_unique(ids)
        for seq_id in ids:
            if seq_id not in self._keys:
                raise UnknownSequenceError(f"unknown sequence id {seq_id!r}")
        for seq_id in ids:
            if self._prefix_caching:
                tokens = self._matchable(seq_id)
                if tokens:
                    n = len(tokens)
                    self._freed.append(
                        (
                            tokens,
                            [k[:n] for k in self._keys[seq_id]],
                            [v[:n] for v in self._values[seq_id]],
                        )
                    )
            self._swapped.discard(seq_id)
            for block in self._blocks.pop(seq_id):
                del self._owner[block]
            del self._keys[seq_id], self._values[seq_id], self._tokens[seq_id]

    def free_sequence(self, seq_id: int) -> None:
        self.free_sequences([seq_id])

    # -- swapping (the data stays; only the rules are modelled) --------------------

    def _check_resident(self, ids: list[int]) -> None:
        for seq_id in ids:
            if seq_id in self._swapped:
                raise SequenceSwappedError(f"sequence {seq_id} is swapped out")

    def swap_out(self, seq_ids: Any) -> int:
        ids: list[int] = check_seq_ids(seq_ids).tolist()
        check_unique(ids)
        if not self._swap_blocks:
            raise SequenceError("this cache has no swap space")
        for seq_id in ids:
            if seq_id not in self._keys:
                raise UnknownSequenceError(f"unknown sequence id {seq_id!r}")
            if seq_id in self._swapped:
                raise SequenceSwappedError(f"sequence {seq_id} is already swapped out")
        used = sum(len(self._blocks[s]) for s in self._swapped)
        moving = sum(len(self._blocks[s]) for s in ids)
        if used + moving > self._swap_blocks:
            raise SwapSpaceFullError(
                f"swapping out needs {moving} slots, {self._swap_blocks - used} free"
            )
        self._swapped.update(ids)
        return moving

    def swap_in(self, seq_ids: Any) -> int:
        ids: list[int] = check_seq_ids(seq_ids).tolist()
        check_unique(ids)
        for seq_id in ids:
            if seq_id not in self._swapped:
                raise SequenceError(f"sequence {seq_id} is not swapped out")
        self._swapped.difference_update(ids)
        return sum(len(self._blocks[s]) for s in ids)

    def reset(self) -> None:
        self._swapped.clear()
        self._keys.clear()
        self._values.clear()
        self._blocks.clear()
        self._owner.clear()
        self._tokens.clear()
        self._freed.clear()

    def stats(self) -> CacheStats:
        g = self._geometry
        used = sum(len(b) for b in self._blocks.values())
        tokens = sum(self.seq_len(s) for s in self._keys)
        return CacheStats(
            blocks_total=self._num_blocks,
            blocks_used=used,
            blocks_free=self._num_blocks - used,
            num_sequences=len(self._keys),
            tokens_stored=tokens,
            pool_bytes=g.pool_bytes(self._num_blocks),
            bytes_used=used * g.bytes_per_block,
            slots_allocated=used * g.block_size,
            fragmentation_slots=used * g.block_size - tokens,
            block_references=used,
            prefix_queries=self._queries,
            prefix_query_tokens=self._query_tokens,
            prefix_hit_tokens=self._hit_tokens,
        )


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    for x, y in zip(a[:limit], b[:limit], strict=False):
        if x != y:
            break
        n += 1
    return n
