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
    """Occupancy of a cache at one moment."""

    blocks_total: int
    blocks_used: int
    blocks_free: int
    num_sequences: int
    tokens_stored: int
    pool_bytes: int
    bytes_used: int
    slots_allocated: int
    """Token slots of the allocated blocks (``blocks_used * block_size``)."""
    fragmentation_slots: int
    """Allocated token slots that hold no token (internal fragmentation: at
    most ``block_size - 1`` per sequence)."""

    @property
    def fragmentation(self) -> float:
        """Fraction of allocated slots that hold no token."""
        if not self.slots_allocated:
            return 0.0
        return self.fragmentation_slots / self.slots_allocated


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
        self, keys: Any, values: Any, seq_ids: Any, layer: int = 0
    ) -> IntArray:
        """Append ``T`` tokens to each sequence in one layer; returns the
        physical block of every appended token, int32 ``[batch, T]``."""
        ...

    def append_kv_all_layers(self, keys: Any, values: Any, seq_ids: Any) -> IntArray:
        """Append one step to every layer at once (``[L, batch, T, H, D]``)."""
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
        out: Any = None,
    ) -> Any:
        """Attention of `query` over one layer (`llmir.runtime.attention`)."""
        ...

    def free_sequences(self, seq_ids: Any) -> None:
        """Release every listed sequence, or (on a bad id) none of them."""
        ...

    def reset(self) -> None:
        """Forget every sequence and free every block."""
        ...

    def stats(self) -> CacheStats: ...
