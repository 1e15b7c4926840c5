"""`KVCache`: every operation the `llm` IR performs on a cache, as one typed
protocol.

`llmir.runtime.PagedKVCache` implements it over a backend (CPU or CUDA);
`llmir.testing.DenseReferenceCache` implements it as a dense float64 model
(what ``llmir-run --check`` compares against).  The interpreter, the
``convert-llm-to-func`` ABI and the free function
`llmir.paged_attention` use nothing else.

Shapes: keys/values ``[batch, T, H, D]`` (``[L, batch, T, H, D]`` for a
whole step), sequence ids ``[batch]`` (an unknown id starts a sequence),
block tables int32 ``[batch, max_blocks]`` padded with -1 and lengths int32
``[batch]``, queries ``[batch, Tq, Hq, D]`` with Hq a multiple of H.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from llmir.runtime.geometry import CacheGeometry

IntArray = npt.NDArray[np.int32]


@dataclass(frozen=True)
class CacheStats:
    """Occupancy and sharing of a cache at one moment.

    Blocks are used (held by at least one sequence), cached-free (held by
    none but still matchable by a later prompt) or free:
    ``blocks_used + blocks_cached + blocks_free == blocks_total``.
    Counters (queries, evictions, copies) run from the cache's creation.
    """

    blocks_total: int
    blocks_used: int
    blocks_free: int
    """Free blocks without a hash (cached-free ones are `blocks_cached`)."""
    num_sequences: int
    tokens_stored: int
    """Tokens of all sequences (a shared block's tokens count per holder)."""
    pool_bytes: int
    bytes_used: int
    slots_allocated: int
    """Token slots of the used blocks (``blocks_used * block_size``)."""
    fragmentation_slots: int
    """Slots of used blocks that hold no token (internal fragmentation: the
    unused end of partly filled blocks)."""
    blocks_cached: int = 0
    block_references: int = 0
    """Block-table entries over all sequences: the blocks the same sequences
    would use if nothing were shared."""
    blocks_shared: int = 0
    """Used blocks held by more than one sequence."""
    prefix_queries: int = 0
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    """Prompt tokens served from cached blocks (never more than a query's
    length minus one: the last token is always computed)."""
    prefix_partial_hit_tokens: int = 0
    """Of the hit tokens, those copied from a partly matching block."""
    evictions: int = 0
    """Cached-free blocks given up to make room."""
    cow_copies: int = 0
    """Blocks copied because a sequence wrote into a block it shared."""
    swap_blocks_total: int = 0
    """Block slots of the swap tier (0: the cache has none)."""
    swap_blocks_used: int = 0
    swapped_sequences: int = 0
    swaps_out: int = 0
    swaps_in: int = 0
    swap_bytes_moved: int = 0
    """Bytes copied between the pool and the tier, both ways."""
    blocks_pruned: int = 0
    """Blocks given back by sink + window pruning since creation."""
    tokens_pruned: int = 0
    """Tokens of the live sequences that pruning gave back (their lengths
    still count them: positions are kept)."""

    @property
    def blocks_available(self) -> int:
        """What an allocation may take: free and cached-free blocks."""
        return self.blocks_free + self.blocks_cached

    @property
    def fragmentation(self) -> float:
        """Fraction of allocated slots that hold no token."""
        if not self.slots_allocated:
            return 0.0
        return self.fragmentation_slots / self.slots_allocated

    @property
    def hit_rate(self) -> float:
        """Fraction of queried prompt tokens served from the cache."""
        if not self.prefix_query_tokens:
            return 0.0
        return self.prefix_hit_tokens / self.prefix_query_tokens

    @property
    def blocks_saved(self) -> int:
        """Blocks that sharing saves right now."""
        return self.block_references - self.blocks_used

    @property
    def sharing_factor(self) -> float:
        """Block-table entries per used block (1.0: nothing shared)."""
        if not self.blocks_used:
            return 1.0
        return self.block_references / self.blocks_used

    def report(self) -> str:
        """The statistics as aligned lines of text (``llmir-run --stats``)."""
        mib = 1 << 20
        lines = [
            f"blocks        {self.blocks_used} used, {self.blocks_cached} cached-free, "
            f"{self.blocks_free} free of {self.blocks_total} "
            f"({self.bytes_used / mib:.2f} of {self.pool_bytes / mib:.2f} MiB)",
            f"sequences     {self.num_sequences} holding {self.tokens_stored} tokens",
            f"fragmentation {self.fragmentation_slots} of {self.slots_allocated} "
            f"slots unused ({100 * self.fragmentation:.1f}%)",
            f"sharing       {self.blocks_shared} blocks shared, factor "
            f"{self.sharing_factor:.2f}, {self.blocks_saved} blocks saved, "
            f"{self.cow_copies} copy-on-write copies",
        ]
        if self.swap_blocks_total:
            lines.append(
                f"swap tier     {self.swap_blocks_used} of {self.swap_blocks_total} "
                f"slots used by {self.swapped_sequences} sequence(s); "
                f"{self.swaps_out} swapped out, {self.swaps_in} in, "
                f"{self.swap_bytes_moved / mib:.2f} MiB moved"
            )
        if self.blocks_pruned:
            lines.append(
                f"pruning       {self.blocks_pruned} blocks given back, "
                f"{self.tokens_pruned} tokens of live sequences pruned"
            )
        if self.prefix_queries:
            lines.append(
                f"prefix cache  {self.prefix_queries} queries, "
                f"{self.prefix_hit_tokens} of {self.prefix_query_tokens} tokens hit "
                f"({100 * self.hit_rate:.1f}%, {self.prefix_partial_hit_tokens} "
                f"from partial blocks), {self.evictions} evictions"
            )
        return "\n".join(lines)


@runtime_checkable
class KVCache(Protocol):
    """A paged KV cache as the IR sees it."""

    @property
    def geometry(self) -> CacheGeometry: ...

    @property
    def num_blocks(self) -> int: ...

    @property
    def device(self) -> str: ...

    def __contains__(self, seq_id: object) -> bool: ...

    def seq_len(self, seq_id: int) -> int:
        """Tokens of `seq_id` (the most written to any layer)."""
        ...

    def append_kv(
        self,
        keys: Any,
        values: Any,
        seq_ids: Any,
        layer: int = 0,
        *,
        token_ids: Any = None,
    ) -> IntArray:
        """Append ``T`` tokens to each sequence in one layer; returns the
        physical block of every appended token, int32 ``[batch, T]``.
        `token_ids` ``[batch, T]``, optional, name the tokens stored (for
        prefix caching)."""
        ...

    def append_kv_all_layers(
        self, keys: Any, values: Any, seq_ids: Any, *, token_ids: Any = None
    ) -> IntArray:
        """Append one step to every layer at once (``[L, batch, T, H, D]``)."""
        ...

    def reserve_slots(
        self, seq_ids: Any, num_tokens: int, *, require_level: bool = False
    ) -> tuple[IntArray, IntArray, IntArray]:
        """Reserve `num_tokens` positions in every layer of each sequence:
        (slots ``[L, batch, T]``, block table, lengths).  `require_level`:
        refuse a sequence with a step half-appended."""
        ...

    def write_kv(self, keys: Any, values: Any, slots: Any, layer: int = 0) -> None:
        """Write one layer's keys/values into reserved slots (a
        `reserve_slots` result, or one layer's ``[batch, T]`` of it)."""
        ...

    def match_prefixes(self, seq_ids: Any, token_ids: Any) -> IntArray:
        """Start each new sequence with the cached prefix of its prompt
        (``token_ids [batch, T]``, negative ids pad a row's end); returns the
        tokens each now holds, int32 ``[batch]``."""
        ...

    def fork_sequences(self, parents: Any, children: Any) -> None:
        """Start each new child as a copy of its parent, sharing its blocks."""
        ...

    def block_table(self, seq_ids: Any) -> tuple[IntArray, IntArray]:
        """Block tables (-1 padded, as wide as the longest listed sequence
        needs) and lengths of `seq_ids`."""
        ...

    def lookup_kv(
        self,
        block_table: Any,
        seq_lens: Any,
        layer: int = 0,
        *,
        as_float32: bool = False,
        out: tuple[Any, Any] | None = None,
    ) -> tuple[Any, Any]:
        """One layer's keys and values, contiguous ``[batch, max_len, H,
        D]``, zero past each length."""
        ...

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
        """Attention of `query` over one layer (`llmir.runtime.attention`)."""
        ...

    def swap_out(self, seq_ids: Any) -> int:
        """Move the listed sequences to the swap tier (their pool blocks
        freed); returns the blocks moved."""
        ...

    def swap_in(self, seq_ids: Any) -> int:
        """Bring swapped-out sequences back into pool blocks."""
        ...

    def free_sequences(self, seq_ids: Any, *, priority: int | None = None) -> None:
        """Release every listed sequence, or (on a bad id) none of them;
        cached blocks keep `priority` for eviction (None: the sequence's)."""
        ...

    def reset(self) -> None:
        """Forget every sequence and free every block."""
        ...

    def stats(self) -> CacheStats: ...
