"""`PagedKVCache`: the paged KV cache of llmir, on any backend.

Composition (one job per part):
  * `CacheGeometry` (geometry.py): element type, sizes, the pool layout;
  * `BlockAllocator` (allocator.py): the fixed pool of block ids, ref counts;
  * `SequenceTable` (sequences.py): block tables, per-layer lengths, slot
    mapping: all host-side bookkeeping, the same for every device;
  * a `Backend` (backend.py), chosen once by `device`: the pool and the
    kernels that write, gather and attend over it (`llmir.runtime.cpu`,
    `llmir.runtime.cuda`).

Every argument is checked here, once, before anything changes
(`llmir.runtime.validation`); backends receive validated values.

Accepted input element types (keys and values must agree):
  * float32 for every element type (encoded with round to nearest even);
  * the stored form: ``np.float16`` or ``uint16`` bit patterns for f16,
    ``uint16`` bit patterns for bf16 (copied bit for bit).
NaN and Inf are stored as given (f16/bf16 keep them; NaN stays NaN).

`lookup_kv` returns, by default, values in the narrowest numpy type that
holds them exactly: float32 for f32, ``np.float16`` for f16, and float32 for
bf16 (numpy has no bfloat16; every bf16 value is a float32).  Pass
``as_float32=True`` to get float32 for every element type.

Threads.  One cache may be shared by several threads: a lock is held around
each call's bookkeeping (plan, commit and the write into the slots it
reserved), so concurrent appends to different sequences never corrupt each
other.  Attention and lookups take validated tables and read the pool
without the lock.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import (
    BlockTableError,
    ConfigError,
    DTypeError,
    SequenceError,
    ShapeError,
)
from llmir.runtime.allocator import BlockAllocator
from llmir.runtime.backend import Backend, create_backend
from llmir.runtime.dtypes import ElementType, element_type
from llmir.runtime.eviction import EvictionPolicy
from llmir.runtime.geometry import INT32_MAX, CacheGeometry, as_int
from llmir.runtime.memory import blocks_for_budget, planned_block_bytes
from llmir.runtime.options import CacheOptions
from llmir.runtime.prefix_cache import PrefixCache
from llmir.runtime.protocol import CacheStats
from llmir.runtime.reservations import Reservations
from llmir.runtime.sequences import AppendPlan, SequenceTable
from llmir.runtime.swap import SwapSpace, SwapTier
from llmir.runtime.validation import (
    INT32_MIN,
    AttentionReads,
    BlockTable,
    check_attention_options,
    check_layer,
    check_prompts,
    check_query,
    check_seq_id,
    check_seq_ids,
    check_slots,
    check_token_ids,
    integer_array,
    require_finite,
    validate_table_for,
)

IntArray = npt.NDArray[np.int32]
BackendFactory = Callable[[CacheGeometry, int], Backend]


class PagedKVCache:
    """A paged KV cache: one block table per sequence, shared by all layers,
    over a pool of `num_blocks` blocks allocated once on `device`.

    Size the pool with `num_blocks` or with `memory_budget_bytes` (the most
    blocks whose K/V and bookkeeping fit, `llmir.runtime.memory`), not both;
    with neither, the pool holds one sequence of `max_seq_len` tokens.

    Sharing: `fork` starts a sequence on its parent's blocks (copy on
    write).  With ``enable_prefix_caching=True``, appends that carry
    `token_ids` index every block they fill, a freed sequence's indexed
    blocks stay matchable until the pool needs them (`eviction` decides
    which go first: "lru", "priority" or an `EvictionPolicy`), and
    `match_prefix` starts a new sequence on the cached blocks of its prompt.
    Prefix reuse assumes, as every serving engine does, that a position's
    keys and values are determined by the tokens up to it.
    """

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
        memory_budget_bytes: int | None = None,
        device: str = "cpu",
        enable_prefix_caching: bool = False,
        eviction: str | EvictionPolicy = "lru",
        swap_blocks: int = 0,
        swap_dir: str | None = None,
        window_tokens: int | None = None,
        sink_tokens: int | None = None,
        heavy_hitter_blocks: int | None = None,
        heavy_hitter_score: str = "mean",
        backend_factory: BackendFactory | None = None,
    ) -> None:
        """`swap_blocks` > 0 gives the cache a swap tier of that many block
        slots: a file in `swap_dir` (default: the temporary directory) for
        a CPU cache, host memory for a CUDA one (`llmir.runtime.swap`).
        `window_tokens` (and `sink_tokens`) prune every sequence to its
        last (and first) tokens, giving blocks back; `heavy_hitter_blocks`
        keeps, within that many blocks, the ones attention weighed most
        (`CacheOptions`).
        `backend_factory` (geometry, num_blocks) -> `Backend` replaces the
        backend of `device` (`llmir.distributed` passes its sharded one)."""
        options = CacheOptions(
            enable_prefix_caching,
            eviction,
            swap_blocks,
            window_tokens,
            sink_tokens,
            heavy_hitter_blocks,
            heavy_hitter_score,
        )
        geometry = CacheGeometry(
            element_type(dtype),
            num_layers,
            num_heads,
            head_dim,
            block_size,
            max_seq_len,
        )
        for name, count in (
            ("window_tokens", window_tokens),
            ("sink_tokens", sink_tokens),
        ):
            if count is not None and count > max_seq_len:
                raise ConfigError(f"{name}={count} exceeds max_seq_len {max_seq_len}")
        if heavy_hitter_blocks is not None and window_tokens is not None:
            least = (
                -(-(sink_tokens or 0) // block_size)
                + -(-window_tokens // block_size)
                + 1
            )
            if heavy_hitter_blocks < least:
                raise ConfigError(
                    f"heavy_hitter_blocks={heavy_hitter_blocks} is below the "
                    f"{least} blocks the sinks and the window need "
                    "(ceil(sink_tokens/B) + ceil(window_tokens/B) + 1)"
                )
        self._geometry = geometry
        self._options = options
        self._num_blocks = _pool_blocks(geometry, num_blocks, memory_budget_bytes)
        self._allocator = BlockAllocator(self._num_blocks, options.eviction_policy())
        self._backend: Backend = (
            create_backend(device, geometry, self._num_blocks)
            if backend_factory is None
            else backend_factory(geometry, self._num_blocks)
        )
        self._prefix = (
            PrefixCache(self._allocator, geometry.block_size)
            if options.prefix_caching
            else None
        )
        swap = None
        if options.swap_blocks:
            directory = swap_dir
            if directory is None and self._backend.device == "cpu":
                directory = tempfile.gettempdir()
            swap = SwapTier(
                SwapSpace(geometry, options.swap_blocks, directory),
                self._backend.swap_out,
                self._backend.swap_in,
            )
        self._seqs = SequenceTable(
            self._allocator,
            geometry,
            self._prefix,
            self._backend.copy_blocks,
            swap,
            options.window_tokens,
            options.sink_tokens,
            options.heavy_hitter_blocks,
            options.heavy_hitter_score,
        )
        self._lock = threading.Lock()
        # The reservations handed out, trusted until their blocks leave
        # their sequences (`llmir.runtime.reservations`).
        self._reservations = Reservations(geometry.num_layers, geometry.block_size)

    @classmethod
    def from_geometry(
        cls,
        geometry: CacheGeometry,
        num_blocks: int | None = None,
        *,
        memory_budget_bytes: int | None = None,
        device: str = "cpu",
        options: CacheOptions | None = None,
        swap_dir: str | None = None,
        backend_factory: BackendFactory | None = None,
    ) -> PagedKVCache:
        """The cache of a `CacheGeometry` (e.g. an IR type's) and
        `CacheOptions` (e.g. an `llm.create_kv_cache`'s)."""
        options = CacheOptions() if options is None else options
        return cls(
            geometry.num_layers,
            geometry.num_heads,
            geometry.head_dim,
            geometry.block_size,
            geometry.max_seq_len,
            geometry.element_type,
            num_blocks=num_blocks,
            memory_budget_bytes=memory_budget_bytes,
            device=device,
            enable_prefix_caching=options.prefix_caching,
            eviction=options.eviction,
            swap_blocks=options.swap_blocks,
            swap_dir=swap_dir,
            window_tokens=options.window_tokens,
            sink_tokens=options.sink_tokens,
            heavy_hitter_blocks=options.heavy_hitter_blocks,
            heavy_hitter_score=options.heavy_hitter_score,
            backend_factory=backend_factory,
        )

    # -- configuration (read-only) --------------------------------------------

    @property
    def geometry(self) -> CacheGeometry:
        return self._geometry

    @property
    def element_type(self) -> ElementType:
        return self._geometry.element_type

    @property
    def num_layers(self) -> int:
        return self._geometry.num_layers

    @property
    def num_heads(self) -> int:
        return self._geometry.num_heads

    @property
    def head_dim(self) -> int:
        return self._geometry.head_dim

    @property
    def block_size(self) -> int:
        return self._geometry.block_size

    @property
    def max_seq_len(self) -> int:
        return self._geometry.max_seq_len

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def device(self) -> str:
        return self._backend.device

    @property
    def options(self) -> CacheOptions:
        return self._options

    @property
    def prefix_caching(self) -> bool:
        return self._prefix is not None

    @property
    def kv_pool(self) -> Any:
        """The pool, laid out as in `llmir.runtime.geometry`."""
        return self._backend.kv_pool

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def allocator(self) -> BlockAllocator:
        return self._allocator

    @property
    def sequences(self) -> SequenceTable:
        """The host-side bookkeeping (block tables, lengths, slot mapping)."""
        return self._seqs

    # -- sequences -------------------------------------------------------------

    def __contains__(self, seq_id: object) -> bool:
        with self._lock:
            return seq_id in self._seqs

    def __len__(self) -> int:
        with self._lock:
            return len(self._seqs)

    @property
    def seq_ids(self) -> list[int]:
        with self._lock:
            return self._seqs.seq_ids

    def seq_len(self, seq_id: int) -> int:
        """Tokens of `seq_id` (the most written to any layer)."""
        with self._lock:
            return self._seqs.seq_len(check_seq_id(seq_id))

    def layer_lens(self, seq_id: int) -> IntArray:
        """Tokens written to each layer of `seq_id`."""
        with self._lock:
            return self._seqs.layer_lens(check_seq_id(seq_id))

    def blocks_of(self, seq_id: int) -> IntArray:
        """The physical blocks of `seq_id` in logical order."""
        with self._lock:
            return self._seqs.blocks_of(check_seq_id(seq_id))

    def block_table(self, seq_ids: Any) -> tuple[IntArray, IntArray]:
        """(table int32 ``[batch, max_blocks]`` padded with -1, lens int32
        ``[batch]``) for `seq_ids`; UnknownSequenceError for an unknown id."""
        ids = check_seq_ids(seq_ids)
        with self._lock:
            return self._seqs.block_table(ids)

    def free_sequence(self, seq_id: int, *, priority: int | None = None) -> None:
        """Release the blocks of `seq_id` and forget it."""
        self.free_sequences([check_seq_id(seq_id)], priority=priority)

    def free_sequences(self, seq_ids: Any, *, priority: int | None = None) -> None:
        """Release every listed sequence, or (on an unknown or repeated id)
        none of them.  A block returns to the pool when no sequence holds
        it; with prefix caching, an indexed block stays matchable, with
        retention `priority` (default: the sequence's, see `set_priority`)."""
        ids = check_seq_ids(seq_ids)
        keep = None if priority is None else _check_priority(priority)
        with self._lock:
            self._seqs.free_sequences(ids, keep)
            self._reservations.revoke_for(ids)

    # -- sharing ---------------------------------------------------------------

    def fork(self, parent: int, child: int) -> None:
        """Start sequence `child` as a copy of `parent`: same tokens, same
        blocks (shared, ref counts up); the first append by either into the
        shared, partly filled last block copies that one block first.  Costs
        bookkeeping only, whatever the sequence's length."""
        self.fork_sequences([check_seq_id(parent)], [check_seq_id(child)])

    def fork_sequences(self, parents: Any, children: Any) -> None:
        """`fork` each ``parents[i]`` into ``children[i]`` (a parent may be
        listed more than once: n samples of one prompt); all or nothing."""
        parent_ids = check_seq_ids(parents)
        child_ids = check_seq_ids(children)
        if parent_ids.shape != child_ids.shape:
            raise ShapeError(
                f"{parent_ids.size} parents for {child_ids.size} children: give "
                "one parent per child"
            )
        with self._lock:
            self._check_no_pending_reservation(parent_ids)
            self._seqs.fork(parent_ids, child_ids)

    def _check_no_pending_reservation(self, parents: npt.NDArray[np.int64]) -> None:
        """A parent whose reserved slots are not written in every layer yet
        would share blocks the step has still to fill: the child would copy
        them empty (as a half-appended step, refused the same way)."""
        pending = self._reservations.pending_write(parents)
        if pending is not None:
            raise SequenceError(
                f"sequence {pending[0]} has reserved slots not yet written "
                f"in layer(s) {pending[1]}: write them (write_kv) before forking it"
            )

    def match_prefix(self, seq_id: int, token_ids: Any) -> int:
        """Start the new sequence `seq_id` with the longest cached prefix of
        its prompt `token_ids` (1-D); returns how many tokens it holds now,
        the ones the caller may skip computing (always fewer than the
        prompt's: its last token is left to compute).  Whole cached blocks
        are shared; when the next cached block agrees only on its first k
        tokens, those k are copied into a fresh block.  Needs
        ``enable_prefix_caching=True``."""
        ids = check_seq_ids([check_seq_id(seq_id)])
        tokens = integer_array("token_ids", token_ids)
        if tokens.ndim != 1:
            raise ShapeError(f"token_ids must be 1-D, got shape {tokens.shape}")
        return int(self.match_prefixes(ids, tokens[None, :])[0])

    def match_prefixes(self, seq_ids: Any, token_ids: Any) -> IntArray:
        """`match_prefix` for a batch of new sequences: ``token_ids [batch,
        T]`` int, each row a prompt followed by negative padding.  Returns
        int32 ``[batch]``."""
        ids = check_seq_ids(seq_ids)
        prompts, lens = check_prompts(token_ids, ids.size)
        if self._prefix is None:
            raise ConfigError(
                "prefix matching needs a cache created with enable_prefix_caching=True"
            )
        with self._lock:
            return self._seqs.match_prefixes(ids, prompts, lens)

    def set_priority(self, seq_id: int, priority: int) -> None:
        """The retention priority of `seq_id`'s blocks once it is freed: with
        ``eviction="priority"`` the lowest goes first."""
        seq = check_seq_id(seq_id)
        value = _check_priority(priority)
        with self._lock:
            self._seqs.set_priority(seq, value)

    def priority(self, seq_id: int) -> int:
        with self._lock:
            return self._seqs.priority(check_seq_id(seq_id))

    # -- swapping ----------------------------------------------------------------

    def swap_out(self, seq_ids: Any) -> int:
        """Move the listed sequences' blocks (every layer) to the swap tier
        and give their pool blocks back; returns the blocks moved.  A swapped
        sequence rejects appends, tables and forks (`SequenceSwappedError`)
        until `swap_in`; freeing it frees its tier slots.  A block another
        sequence holds stays in the pool for that one.  All or nothing
        (`SwapSpaceFullError` when the tier lacks room)."""
        ids = check_seq_ids(seq_ids)
        with self._lock:
            moved = self._seqs.swap_out(ids)
            self._reservations.revoke_for(ids)
            return moved

    def swap_in(self, seq_ids: Any) -> int:
        """Bring swapped-out sequences back into free pool blocks, bit for
        bit (block ids may differ: take fresh block tables); returns the
        blocks moved.  All or nothing (`OutOfBlocksError`)."""
        ids = check_seq_ids(seq_ids)
        with self._lock:
            return self._seqs.swap_in(ids)

    def is_swapped(self, seq_id: int) -> bool:
        with self._lock:
            return self._seqs.is_swapped(check_seq_id(seq_id))

    def close(self) -> None:
        """Release what outlives the object's memory: the swap file."""
        with self._lock:
            if self._seqs.swap is not None:
                self._seqs.swap.space.close()

    def check_invariants(self) -> None:
        """Assert the bookkeeping's invariants (allocator, tables, prefix
        index); for tests, after every operation."""
        with self._lock:
            self._seqs.check_invariants()

    def reset(self) -> None:
        """Forget every sequence and free every block.  The pool's bytes are
        left as they are (appends overwrite them)."""
        with self._lock:
            self._seqs.reset()
            self._reservations.revoke_all()

    def stats(self) -> CacheStats:
        block_bytes = self._geometry.bytes_per_block
        with self._lock:
            allocator = self._allocator
            used = allocator.num_used
            shared, references = allocator.shared_blocks()
            prefix = self._prefix.stats if self._prefix is not None else None
            return CacheStats(
                blocks_total=self._num_blocks,
                blocks_used=used,
                blocks_free=allocator.num_free - allocator.num_cached,
                num_sequences=len(self._seqs),
                tokens_stored=self._seqs.tokens_stored(),
                pool_bytes=self._geometry.pool_bytes(self._num_blocks),
                bytes_used=used * block_bytes,
                slots_allocated=used * self._geometry.block_size,
                fragmentation_slots=used * self._geometry.block_size
                - allocator.filled_slots(),
                blocks_cached=allocator.num_cached,
                block_references=references,
                blocks_shared=shared,
                prefix_queries=prefix.queries if prefix else 0,
                prefix_query_tokens=prefix.query_tokens if prefix else 0,
                prefix_hit_tokens=prefix.hit_tokens if prefix else 0,
                prefix_partial_hit_tokens=prefix.partial_hit_tokens if prefix else 0,
                evictions=allocator.evictions,
                cow_copies=self._seqs.cow_copies,
                blocks_pruned=self._seqs.blocks_pruned,
                tokens_pruned=self._seqs.tokens_pruned(),
                **_swap_stats(self._seqs),
            )

    def snapshot(self) -> tuple[Any, ...]:
        """The complete bookkeeping state, comparable with ``==`` (tests use
        it, with the pool's bytes, to prove a rejected call changed nothing)."""
        with self._lock:
            return self._seqs.snapshot()

    # -- append ----------------------------------------------------------------

    def append_kv(
        self,
        keys: Any,
        values: Any,
        seq_ids: Any,
        layer: int = 0,
        *,
        token_ids: Any = None,
    ) -> IntArray:
        """Append ``T`` tokens to each sequence of the batch, in one layer.

        keys/values ``[batch, T, H, D]``; seq_ids ``[batch]`` distinct ids
        (an unknown id starts a new sequence).  Returns the physical block of
        every appended token, int32 ``[batch, T]``.  Tokens go to positions
        ``[written, written + T)`` of that layer (see `sequences` for the
        length semantics).  An empty batch or ``T == 0`` is a no-op.

        `token_ids` ``[batch, T]`` (optional): the ids of the appended
        tokens.  With prefix caching on, each block they complete in every
        layer is indexed for later `match_prefix` calls; without them (or
        with prefix caching off) nothing is indexed.
        """
        layer = check_layer(layer, self._geometry.num_layers)
        k, v, ids = self._checked_inputs(keys, values, seq_ids, rank=4)
        batch, tokens = k.shape[0], k.shape[1]
        tids = None if token_ids is None else check_token_ids(token_ids, batch, tokens)
        if batch == 0 or tokens == 0:
            return np.zeros((batch, tokens), np.int32)
        with self._lock:
            plan = self._seqs.plan_append(ids, tokens, layer, tids)
            blocks, slots = self._seqs.commit_append(plan)
            if plan.prune:
                self._revoke_pruned(plan)
            self._backend.write(
                layer,
                k.reshape(1, batch * tokens, *k.shape[2:]),
                v.reshape(1, batch * tokens, *v.shape[2:]),
                slots,
            )
        return blocks

    def append_kv_all_layers(
        self, keys: Any, values: Any, seq_ids: Any, *, token_ids: Any = None
    ) -> IntArray:
        """Append one step to every layer in a single kernel call.

        keys/values ``[L, batch, T, H, D]``; every listed sequence must have
        all layers level (no step half-appended by `append_kv`).  Returns the
        physical block of every appended token, int32 ``[batch, T]``.
        `token_ids` as for `append_kv`.
        """
        k, v, ids = self._checked_inputs(keys, values, seq_ids, rank=5)
        layers, batch, tokens = k.shape[0], k.shape[1], k.shape[2]
        tids = None if token_ids is None else check_token_ids(token_ids, batch, tokens)
        if batch == 0 or tokens == 0:
            return np.zeros((batch, tokens), np.int32)
        with self._lock:
            plan = self._seqs.plan_append(ids, tokens, None, tids)
            blocks, slots = self._seqs.commit_append(plan)
            if plan.prune:
                self._revoke_pruned(plan)
            self._backend.write(
                None,
                k.reshape(layers, batch * tokens, *k.shape[3:]),
                v.reshape(layers, batch * tokens, *v.shape[3:]),
                slots,
            )
        return blocks

    # -- reserved steps: slots once per step, data per layer ----------------------

    def reserve_slots(
        self, seq_ids: Any, num_tokens: int, *, require_level: bool = False
    ) -> tuple[IntArray, IntArray, IntArray]:
        """Reserve `num_tokens` positions in every layer of each sequence (an
        unknown id starts one), allocating the blocks they need: the
        bookkeeping of a whole decode step, done once.  Returns ``(slots,
        table, lens)``: slots int32 ``[L, batch, T]`` (read-only; layer l of
        a sequence gets positions ``[written[l], written[l] + T)``), and the
        block table and lengths the step's attention reads.  Fill the slots
        with `write_kv`, layer by layer; until then a layer reads the
        block's previous contents there, as during a per-layer append.
        Reserved positions carry no token ids (prefix caching does not index
        them).  With `require_level` (the IR's ``llm.reserve_slots``, which
        stands for one whole step), a sequence with a step half-appended is
        refused: its returned table could not be the one each layer's
        attention would have read."""
        ids = check_seq_ids(seq_ids)
        count = as_int("num_tokens", num_tokens)
        if count < 0:
            raise ShapeError(f"num_tokens must be >= 0, got {count}")
        with self._lock:
            if ids.size == 0 or count == 0:
                slots = np.zeros((self.num_layers, ids.size, count), np.int32)
            else:
                plan = self._seqs.plan_reserve(ids, count, require_level)
                slots = np.ascontiguousarray(self._seqs.commit_reserve(plan))
                if plan.prune:
                    self._revoke_pruned(plan)
            slots.flags.writeable = False
            handed_out = slots.view()
            self._reservations.add(handed_out, ids)
            table, lens = self._seqs.block_table(ids)
        return handed_out, table, lens

    def _revoke_pruned(self, plan: AppendPlan) -> None:
        """Pruning gave blocks back: reservations with slots in them go."""
        pruned_rows = [row for row, _ in plan.prune]
        pruned = plan.seq_ids[np.isin(plan.rows, pruned_rows)]

        def table_of(ids: npt.NDArray[np.int64]) -> IntArray | None:
            try:
                return self._seqs.block_table(ids)[0]
            except SequenceError:  # freed or swapped out since
                return None

        self._reservations.revoke_unheld(pruned, table_of)

    def write_kv(self, keys: Any, values: Any, slots: Any, layer: int = 0) -> None:
        """Write one layer's keys and values ``[batch, T, H, D]`` into
        reserved slots: a `reserve_slots` result ``[L, batch, T]`` (layer
        `layer` of it is used) or one layer's int32 ``[batch, T]``.  The
        reservation exactly as it was returned is trusted (it is read-only);
        once a block it reserved leaves its sequence (a free, swap, pruning
        or reset) it is revoked and writing it raises `BlockTableError`.
        Any other slots are checked to lie in blocks some sequence holds."""
        layer = check_layer(layer, self._geometry.num_layers)
        k, v = self._checked_kv(keys, values, rank=4)
        batch, tokens = k.shape[0], k.shape[1]
        with self._lock:
            reservation = self._reservations.trusted(slots)
            if reservation is not None:
                mapping = slots[layer]
                if mapping.shape != (batch, tokens):
                    raise ShapeError(
                        f"the reservation is for {mapping.shape[0]} sequence(s) x "
                        f"{mapping.shape[1]} token(s), the keys are {batch} x {tokens}"
                    )
                reservation.written[layer] = True
            elif self._reservations.is_revoked(slots):
                raise BlockTableError(
                    "this reservation was revoked: blocks went back to the pool "
                    "(a free, swap, pruning or reset) after reserve_slots, so its "
                    "slots may lie in other sequences' blocks; reserve the step again"
                )
            else:
                mapping = np.asarray(slots)
                if mapping.ndim == 3:
                    if mapping.shape[0] != self.num_layers:
                        raise ShapeError(
                            f"slots has shape {mapping.shape}, expected "
                            f"({self.num_layers}, batch, T) or (batch, T)"
                        )
                    mapping = mapping[layer]
                used = self._allocator.ref_counts() > 0
                mapping = check_slots(mapping, batch, tokens, self.block_size, used)
            if batch == 0 or tokens == 0:
                return
            self._backend.write(
                layer,
                k.reshape(1, batch * tokens, *k.shape[2:]),
                v.reshape(1, batch * tokens, *v.shape[2:]),
                mapping.reshape(-1),
            )

    # -- reads -----------------------------------------------------------------

    def validate_block_table(self, block_table: Any, seq_lens: Any) -> BlockTable:
        """`llmir.runtime.validation.validate_block_table` against this pool."""
        return validate_table_for(
            self._geometry, self._num_blocks, block_table, seq_lens
        )

    def lookup_kv(
        self,
        block_table: Any,
        seq_lens: Any,
        layer: int = 0,
        *,
        as_float32: bool = False,
        out: tuple[Any, Any] | None = None,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """Keys and values of one layer, contiguous ``[batch, max_len, H, D]``
        with ``max_len = max(seq_lens)``, zero past each sequence's length.
        Element type: see the module docstring.  While a step is appended
        layer by layer, a layer not yet written reads the block's previous
        contents at the new positions (zeros in a never-used block).

        `out`: optional (keys, values) numpy buffers, C-contiguous, of that
        element type and shape ``[batch, N, H, D]`` with ``N >=
        max(seq_lens)``; they are filled (zero past each length) and
        returned.  Reusing buffers avoids the page faults of fresh arrays,
        about half the cost of a large lookup.
        """
        layer = check_layer(layer, self._geometry.num_layers)
        table = self.validate_block_table(block_table, seq_lens)
        if out is not None:
            self._check_lookup_out(out, table, as_float32)
        return self._backend.gather(layer, table, bool(as_float32), out)

    def lookup_sequences(
        self, seq_ids: Any, layer: int = 0, *, as_float32: bool = False
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """`lookup_kv` of the block table of `seq_ids`."""
        table, lens = self.block_table(seq_ids)
        if self._seqs.pruning:
            for seq_id in check_seq_ids(seq_ids).tolist():
                pruned = self._seqs.pruned_blocks(seq_id)
                if pruned.size:
                    b = self.block_size
                    what = (
                        f"tokens [{int(pruned[0]) * b}, {(int(pruned[-1]) + 1) * b})"
                        if int(pruned[-1]) - int(pruned[0]) + 1 == pruned.size
                        else f"the tokens of blocks {pruned.tolist()}"
                    )
                    raise SequenceError(
                        f"sequence {seq_id} was pruned: {what} were given back, "
                        "so it cannot be looked up whole"
                    )
        return self.lookup_kv(table, lens, layer, as_float32=as_float32)

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
    ) -> Any:
        """Attention of ``query [batch, Tq, Hq, D]`` over layer `layer`, for
        the sequences described by `block_table`/`seq_lens` (semantics in
        `llmir.runtime.attention`).

        The query may be a numpy array (float32 or float16; the result has
        its dtype) or, on a CUDA cache, a device array (anything with
        ``__cuda_array_interface__``, such as a torch CUDA tensor; the result
        is a float32 device array).  `out`, if given, is filled and returned.
        """
        geometry = self._geometry
        layer = check_layer(layer, geometry.num_layers)
        options = check_attention_options(
            geometry.head_dim,
            scale,
            causal,
            sliding_window,
            logits_soft_cap,
            sink_tokens,
        )
        q = self._backend.as_array(query)
        # The blocks the mask hides may be holes (a pruned sequence's): the
        # kernels skip them unread.
        heavy_hitters = bool(self._seqs.heavy_hitter_blocks)
        reads = AttentionReads(
            geometry.block_size,
            int(q.shape[1]) if len(q.shape) == 4 else 0,
            options.sliding_window,
            options.sink_tokens,
            holes_allowed=heavy_hitters,
        )
        table = validate_table_for(
            geometry, self._num_blocks, block_table, seq_lens, reads
        )
        check_query(
            q.shape, q.dtype, table.batch, geometry.num_heads, geometry.head_dim
        )
        if out is not None:
            out = self._checked_attention_out(out, q)
        if not heavy_hitters:
            return self._backend.attention(layer, q, table, options, out)
        # Heavy-hitter pruning weighs blocks by the mass attention gives them.
        mass = np.zeros(
            (table.batch, geometry.num_heads, table.table.shape[1]), np.float32
        )
        result = self._backend.attention(layer, q, table, options, out, mass)
        with self._lock:
            self._seqs.add_block_mass(
                table.table,
                table.lens,
                mass,
                int(q.shape[2]),
                int(q.shape[1]),
                options.causal,
            )
        return result

    # -- checks ----------------------------------------------------------------

    def _checked_inputs(
        self, keys: Any, values: Any, seq_ids: Any, *, rank: int
    ) -> tuple[Any, Any, npt.NDArray[np.int64]]:
        k, v = self._checked_kv(keys, values, rank=rank)
        ids = check_seq_ids(seq_ids)
        batch = tuple(k.shape)[-4]  # the simulator's shapes take no negative index
        if ids.shape != (batch,):
            raise ShapeError(
                f"seq_ids has shape {ids.shape}, expected ({batch},) for the batch"
            )
        return k, v, ids

    def _checked_kv(self, keys: Any, values: Any, *, rank: int) -> tuple[Any, Any]:
        """Keys and values of `rank` (4: one layer, 5: all layers) that fit
        the cache: shapes, heads, head_dim, an accepted dtype."""
        geometry = self._geometry
        k = self._backend.as_array(keys)
        v = self._backend.as_array(values)
        what = "[L, batch, T, H, D]" if rank == 5 else "[batch, T, H, D]"
        k_shape, v_shape = tuple(k.shape), tuple(v.shape)
        for name, shape in (("keys", k_shape), ("values", v_shape)):
            if len(shape) != rank:
                raise ShapeError(f"{name} must be {rank}-D {what}, got shape {shape}")
        if k_shape != v_shape:
            raise ShapeError(
                f"keys shape {k_shape} differs from values shape {v_shape}"
            )
        if rank == 5 and k_shape[0] != geometry.num_layers:
            raise ShapeError(
                f"keys carry {k_shape[0]} layers, the cache has {geometry.num_layers}"
            )
        if k_shape[-2] != geometry.num_heads:
            raise ShapeError(
                f"keys have {k_shape[-2]} heads, the cache has {geometry.num_heads}"
            )
        if k_shape[-1] != geometry.head_dim:
            raise ShapeError(
                f"keys have head_dim {k_shape[-1]}, the cache has {geometry.head_dim}"
            )
        if k.dtype != v.dtype:
            raise DTypeError(f"keys are {k.dtype} but values are {v.dtype}")
        element = geometry.element_type
        accepted = (np.dtype(np.float32), *element.raw_input_dtypes)
        if k.dtype not in accepted:
            raise DTypeError(
                f"a {element.name} cache accepts keys of "
                f"{', '.join(str(d) for d in accepted)}, got {k.dtype}"
            )
        if element.quant is not None:
            # Block scales come from the values' range: an inf or a NaN would
            # spoil a whole block, so quantized caches take finite values.
            for name, array in (("keys", k), ("values", v)):
                require_finite(name, array, f"an {element.name} cache")
        return k, v

    def _check_lookup_out(self, out: Any, table: BlockTable, as_float32: bool) -> None:
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise ShapeError("out must be a (keys, values) pair of arrays")
        want = self._geometry.element_type.out_dtype(as_float32)
        heads, dim = self._geometry.num_heads, self._geometry.head_dim
        for name, buf in zip(("keys", "values"), out, strict=True):
            if not isinstance(buf, np.ndarray):
                raise DTypeError(f"out {name} must be a numpy array")
            arr: npt.NDArray[Any] = buf
            if arr.dtype != want:
                raise DTypeError(f"out {name} must be {want}, got {arr.dtype}")
            if (
                arr.ndim != 4
                or arr.shape[0] != table.batch
                or arr.shape[1] < table.max_len
                or arr.shape[2:] != (heads, dim)
            ):
                raise ShapeError(
                    f"out {name} has shape {arr.shape}, expected ({table.batch}, >= "
                    f"{table.max_len}, {heads}, {dim})"
                )
            if not arr.flags.c_contiguous or not arr.flags.writeable:
                raise ShapeError(f"out {name} must be C-contiguous and writeable")
            pool = self._backend.kv_pool
            if isinstance(pool, np.ndarray) and np.shares_memory(arr, pool):
                raise ShapeError(f"out {name} overlaps the cache's pool")
        if out[0].shape != out[1].shape:
            raise ShapeError("out keys and values differ in shape")
        if np.shares_memory(out[0], out[1]):
            raise ShapeError("out keys and values overlap each other")

    def _checked_attention_out(self, out: Any, query: Any) -> Any:
        """`out` for a query: on the host, a writeable C-contiguous numpy array
        of the query's shape and dtype that overlaps neither the query nor
        the pool; on the device, a float32 device array of its shape."""
        on_host = isinstance(query, np.ndarray)
        if on_host and not isinstance(out, np.ndarray):
            raise DTypeError(
                f"out must be a numpy array for a numpy query, got {type(out).__name__}"
            )
        buf = out if on_host else self._backend.as_array(out)
        want = query.dtype if on_host else np.dtype(np.float32)
        if tuple(buf.shape) != tuple(query.shape):
            raise ShapeError(
                f"out has shape {tuple(buf.shape)}, expected the query's "
                f"{tuple(query.shape)}"
            )
        if buf.dtype != want:
            raise DTypeError(f"out has dtype {buf.dtype}, expected {want}")
        if on_host:
            if not (buf.flags.c_contiguous and buf.flags.writeable):
                raise ShapeError("out must be a writeable C-contiguous array")
            pool = self._backend.kv_pool
            if np.shares_memory(buf, query) or (
                isinstance(pool, np.ndarray) and np.shares_memory(buf, pool)
            ):
                raise ShapeError("out overlaps the query or the cache's pool")
        return buf

    def __repr__(self) -> str:
        return (
            f"PagedKVCache({self._geometry.describe()}, {self._num_blocks} blocks, "
            f"device={self.device!r})"
        )


def _pool_blocks(
    geometry: CacheGeometry, num_blocks: object, memory_budget_bytes: object
) -> int:
    """The pool's block count from `num_blocks` or a byte budget."""
    if num_blocks is not None and memory_budget_bytes is not None:
        raise ConfigError("give num_blocks or memory_budget_bytes, not both")
    limit = geometry.max_num_blocks()
    if memory_budget_bytes is not None:
        budget = as_int("memory_budget_bytes", memory_budget_bytes)
        count = blocks_for_budget(geometry, budget)
        if count <= 0:
            raise ConfigError(
                f"memory_budget_bytes {budget} is less than one block "
                f"({planned_block_bytes(geometry)} bytes with its bookkeeping)"
            )
    elif num_blocks is None:
        count = geometry.max_blocks_per_seq
    else:
        count = as_int("num_blocks", num_blocks)
    if not 1 <= count <= limit:
        raise ConfigError(f"num_blocks must be in [1, {limit}], got {count}")
    return count


def _check_priority(priority: object) -> int:
    """A retention priority: an integer within int32."""
    if (
        isinstance(priority, bool | np.bool_)
        or not isinstance(priority, int | np.integer)
        or not INT32_MIN <= priority <= INT32_MAX
    ):
        raise ConfigError(
            f"priority must be an integer in [{INT32_MIN}, {INT32_MAX}], got "
            f"{priority!r}"
        )
    return int(priority)


def _swap_stats(seqs: SequenceTable) -> dict[str, int]:
    swap = seqs.swap
    if swap is None:
        return {}
    return {
        "swap_blocks_total": swap.space.num_slots,
        "swap_blocks_used": swap.space.num_used,
        "swapped_sequences": seqs.num_swapped,
        "swaps_out": swap.swaps_out,
        "swaps_in": swap.swaps_in,
        "swap_bytes_moved": swap.bytes_moved,
    }
