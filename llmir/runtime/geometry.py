"""`CacheGeometry`: the shape of a paged KV cache, and the pool layout, once.

A geometry is built once (from the IR type ``!llm.paged_kv_cache<E, L, H, D,
B, S>`` or from `PagedKVCache`'s arguments) and passed down; nothing else
computes block bytes, blocks per sequence or the pool shape.

The pool layout.  Every kernel (CPU and CUDA; append, lookup, attention) and
every test reference indexes the pool as

    kv_pool.shape == (num_layers, num_blocks, num_heads, 2, block_size, head_dim)
    kv_pool[layer, block, head, KEY]   -> block_size x head_dim keys
    kv_pool[layer, block, head, VALUE] -> block_size x head_dim values

Why this order: decode attention streams, for one (sequence, kv head), the
keys and values of every block of the sequence.  Head-major blocks make each
(block, head) slice one contiguous run of ``2 * block_size * head_dim``
elements, K then V, so one block visit is a single sequential read.
Measured on our 2-core machines (batch 8, 2048 tokens, D=128, f32) this
reached 66% of the read-bandwidth limit at block 16 and 90% at block 64,
against ~45% for vLLM's token-major ``[blocks, block_size, heads, D]`` and
57% for head-major with K and V in separate pools.  Each layer's slice
``kv_pool[layer]`` is contiguous, so per-layer kernels take that view.

A quantized element type (``i8``, ``i4``) has its own pool layout, with K
and V codes and their scales side by side in one row per (token, head):

    kv_pool.shape == (num_layers, num_blocks, num_heads, block_size, row_bytes)

(uint8; the row in `llmir.runtime.quantization`).  A (block, head) slice is
still one contiguous run, K and V together.

Logical to physical: token ``p`` of a sequence whose block table is ``table``
lives in block ``table[p // block_size]`` at slot ``p % block_size``; its
*slot* is ``table[p // block_size] * block_size + p % block_size``.  Block
tables are int32 ``[batch, max_blocks]`` padded with `PAD_BLOCK`; sequence
lengths are int32 ``[batch]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmir.errors import ConfigError
from llmir.runtime.dtypes import ElementType

KEY = 0
VALUE = 1


def layer_block_size_axis(quantized: bool) -> int:
    """The axis holding the block size in one layer of a pool
    (`CacheGeometry.pool_shape` without its layer axis): ``[blocks, H, 2,
    B, D]``, or ``[blocks, H, B, row_bytes]`` for a quantized type.  Every
    backend's kernels find it here."""
    return 2 if quantized else 3


PAD_BLOCK = -1
"""Block-table entry for 'no block' (padding past a sequence's end)."""

INT32_MAX = int(np.iinfo(np.int32).max)
INT64_MAX = int(np.iinfo(np.int64).max)


def as_int(name: str, value: object) -> int:
    """`value` as a Python int: Python and numpy integers are accepted, bool,
    float, str and everything else are a `ConfigError` naming `name`."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return int(value)


def positive_int(name: str, value: object, limit: int = INT32_MAX) -> int:
    """`as_int`, then ``1 <= value <= limit``."""
    number = as_int(name, value)
    if not 1 <= number <= limit:
        raise ConfigError(f"{name} must be in [1, {limit}], got {number}")
    return number


@dataclass(frozen=True)
class CacheGeometry:
    """Element type, layers, kv heads, head_dim, tokens per block and the
    longest sequence of a paged KV cache, with everything derived from them.

    Construction checks every field: each a positive integer that fits in
    int32, and one block's bytes (all layers) within int64.
    """

    element_type: ElementType
    num_layers: int
    num_heads: int
    head_dim: int
    block_size: int
    max_seq_len: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads", "head_dim", "block_size"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name)))
        object.__setattr__(
            self, "max_seq_len", positive_int("max_seq_len", self.max_seq_len)
        )
        quant = self.element_type.quant
        if quant is not None:
            errors = quant.layout_errors(self.head_dim, self.block_size)
            if errors:
                raise ConfigError(
                    f"an {self.element_type.name} cache: {'; '.join(errors)}"
                )
        if (
            self.num_layers
            * self.num_heads
            * self.block_size
            * self.element_type.kv_row_bytes(self.head_dim, self.block_size)
            > INT64_MAX
        ):
            raise ConfigError(
                f"one block of {self.num_layers} layers x {self.num_heads} heads x "
                f"{self.block_size} tokens x {self.head_dim} would exceed 2^63 bytes"
            )

    @property
    def max_blocks_per_seq(self) -> int:
        """Blocks one sequence of `max_seq_len` tokens needs (ceil)."""
        return -(-self.max_seq_len // self.block_size)

    @property
    def elements_per_block(self) -> int:
        """Stored elements of one block, K and V, all layers and heads."""
        return self.num_layers * self.num_heads * 2 * self.block_size * self.head_dim

    @property
    def bytes_per_block(self) -> int:
        """Bytes of one block, K and V, all layers and heads."""
        rows = self.num_layers * self.num_heads * self.block_size
        return rows * self.element_type.kv_row_bytes(self.head_dim, self.block_size)

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token occupies in one layer: its key and value, all heads."""
        return self.num_heads * self.element_type.kv_row_bytes(
            self.head_dim, self.block_size
        )

    @property
    def run_length(self) -> int:
        """Elements of one (block, head) run: its keys then its values."""
        return 2 * self.block_size * self.head_dim

    def pool_shape(self, num_blocks: int) -> tuple[int, ...]:
        """The shape of a pool of `num_blocks` blocks."""
        quant = self.element_type.quant
        if quant is not None:
            return (
                self.num_layers,
                num_blocks,
                self.num_heads,
                self.block_size,
                quant.row_bytes(self.head_dim, self.block_size),
            )
        return (
            self.num_layers,
            num_blocks,
            self.num_heads,
            2,
            self.block_size,
            self.head_dim,
        )

    def block_shape(self) -> tuple[int, ...]:
        """The shape of one block across layers: `pool_shape` without its
        blocks axis (a swap slot's shape)."""
        shape = self.pool_shape(1)
        return (shape[0], *shape[2:])

    def pool_bytes(self, num_blocks: int) -> int:
        return num_blocks * self.bytes_per_block

    def blocks_for(self, tokens: int) -> int:
        """Blocks holding `tokens` tokens of one sequence."""
        return -(-tokens // self.block_size)

    def max_num_blocks(self) -> int:
        """The largest pool whose slot ids (block * block_size + offset) fit in
        int32, which is what slot mappings are."""
        return INT32_MAX // self.block_size

    def describe(self) -> str:
        return (
            f"{self.element_type.name}, {self.num_layers} layers, {self.num_heads} "
            f"kv heads, head_dim {self.head_dim}, block {self.block_size}, "
            f"max_seq_len {self.max_seq_len}"
        )
