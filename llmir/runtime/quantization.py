"""The quantized element types' scheme and block layout, once.

A quantized cache (``i8``, ``i4``) stores integer codes plus the scales that
turn them back into values, inside the pool's blocks, so copy-on-write,
swapping, prefix sharing and sharding move them with the codes.

The scheme (chosen by a float64 simulation of ideal rounding, then of the
incremental appends below, on issue 13's calibration set: head_dim 64, GQA
8/2, four sequences of 37-300 tokens, block 16; relative RMS error of the
attention output against an f32 cache, on N(0, 1) data / on keys with 3 of
64 channels x20):

* **keys: per channel, per block** (KIVI's finding: real keys have outlier
  channels, which per-token scales spread over the whole row).  A block's
  scale of a channel covers every token the block holds; when an append
  brings a larger value, the block's earlier codes of that channel are
  requantised to the wider scale (so an append stays local to the block it
  writes).  i8: symmetric; i4: asymmetric (scale and minimum).
* **values: per token**, i8 symmetric over the whole row, i4 asymmetric per
  group of 16 channels.

    i8 per token (K and V)                 8.3e-3 / 4.4e-2
    i8 rotated K (Hadamard), per token     8.0e-3 / 1.4e-2
    i8 K per channel per block, appended   7.4e-3 / 1.0e-2   <- i8
    i4 per token, groups of 32, asym       1.0e-1 / 3.7e-1
    i4 rotated K, groups of 16, asym       8.9e-2 / 1.8e-1
    i4 K per channel per block, appended,
       V groups of 16, asym                9.3e-2 / 1.4e-1   <- i4

Scales and minimums are float16.  A quantization step is rounded *up* to
float16 and a minimum *down*, so every value stays in range.

Layout.  A quantized pool is ``uint8 [layers, blocks, kv_heads, block_size,
row_bytes]``: one row per (token, head), holding

    [ K codes | K block metadata, slice t | V codes | V metadata of token t ]

K codes and V codes are ``head_dim * bits / 8`` bytes (i4: two codes per
byte, channel ``c`` in the low nibble of byte ``c`` and channel ``c + D/2``
in its high nibble, so each half of a row unpacks into consecutive
channels and the kernels' loops over it vectorize).  A block's K metadata (per
channel: scale, and minimum if asymmetric) is spread over the block's rows,
``row t`` holding its bytes ``[t * k_meta_row, (t + 1) * k_meta_row)``;
channel ``c``'s entry starts at byte ``c * entry_bytes``.  Codes are unsigned:
i8 stores ``code + 128`` (offset binary), so every value decodes as
``stored * scale + offset`` with ``offset = -128 * scale`` (symmetric) or the
minimum (asymmetric).

Bytes per element at block 16 (codes + metadata, K and V averaged): i8
1.078 (0.54x f16), i4 0.75 (0.375x f16).

This module is numpy only: the registry, the verifier and the references
read it.  The kernels are in ``llmir.runtime.cpu.quant_kernels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class QuantScheme:
    """How one quantized element type stores a block."""

    bits: int
    symmetric: bool
    value_group: int | None
    """Channels per value scale; None: the whole row."""
    error_bound: float
    """The relative RMS error of attention outputs against an unquantized
    cache that this scheme stays within (issue 13's gate on keys with
    outlier channels; tests/unit/runtime/test_quantized.py holds it), which
    ``llmir-run --check`` compares a quantized run with."""

    @property
    def entry_bytes(self) -> int:
        """Bytes of one scale (and minimum): float16 each."""
        return 2 if self.symmetric else 4

    def code_bytes(self, head_dim: int) -> int:
        return head_dim * self.bits // 8

    def value_groups(self, head_dim: int) -> int:
        return 1 if self.value_group is None else head_dim // self.value_group

    def key_meta_row_bytes(self, head_dim: int, block_size: int) -> int:
        """K metadata bytes each row of a block carries."""
        return -(-head_dim * self.entry_bytes // block_size)

    def value_meta_row_bytes(self, head_dim: int) -> int:
        return self.value_groups(head_dim) * self.entry_bytes

    def row_bytes(self, head_dim: int, block_size: int) -> int:
        """Bytes of one (token, head) row: K and V codes and metadata."""
        return (
            2 * self.code_bytes(head_dim)
            + self.key_meta_row_bytes(head_dim, block_size)
            + self.value_meta_row_bytes(head_dim)
        )

    def layout_errors(self, head_dim: int, block_size: int) -> list[str]:
        """Why `head_dim`/`block_size` cannot hold this scheme ([]: they
        can)."""
        errors: list[str] = []
        if head_dim * self.bits % 8:
            errors.append(f"head_dim {head_dim} must be even for {self.bits}-bit codes")
        group = self.value_group
        # i4 rows hold channel c and c + D/2 in one byte: each half of a row
        # must hold whole value groups.
        multiple = None if group is None else group * (2 if self.bits == 4 else 1)
        if multiple is not None and head_dim % multiple:
            errors.append(
                f"head_dim {head_dim} must be a multiple of {multiple} "
                f"(value groups of {group}"
                + (" in each half of a row)" if self.bits == 4 else ")")
            )
        if block_size & (block_size - 1):
            errors.append(f"block_size {block_size} must be a power of two")
        return errors


@dataclass(frozen=True)
class BlockLayout:
    """Byte offsets within a quantized row, for one head_dim and block size."""

    scheme: QuantScheme
    head_dim: int
    block_size: int

    @property
    def code_bytes(self) -> int:
        return self.scheme.code_bytes(self.head_dim)

    @property
    def key_meta(self) -> int:
        """Offset of the K metadata slice."""
        return self.code_bytes

    @property
    def key_meta_row(self) -> int:
        return self.scheme.key_meta_row_bytes(self.head_dim, self.block_size)

    @property
    def value_codes(self) -> int:
        return self.code_bytes + self.key_meta_row

    @property
    def value_meta(self) -> int:
        return self.value_codes + self.code_bytes

    @property
    def row_bytes(self) -> int:
        return self.scheme.row_bytes(self.head_dim, self.block_size)


# ---------------------------------------------------------------------------
# numpy readers of a stored block (tests, references, debugging)


def _f16(bits: Array) -> Array:
    return bits.astype(np.uint16).view(np.float16).astype(np.float64)


def _unpack_codes(raw: Array, bits: int, head_dim: int) -> Array:
    """``[rows, code_bytes]`` uint8 -> ``[rows, head_dim]`` codes (int64)."""
    if bits == 8:
        return raw.astype(np.int64)
    codes = np.empty((raw.shape[0], head_dim), np.int64)
    codes[:, : head_dim // 2] = raw & 0x0F
    codes[:, head_dim // 2 :] = raw >> 4
    return codes


def key_meta(block: Array, layout: BlockLayout) -> tuple[Array, Array]:
    """(scale, offset) per channel of one stored block ``[block_size,
    row_bytes]`` (uint8): keys decode as ``stored * scale + offset``."""
    spread = block[:, layout.key_meta : layout.key_meta + layout.key_meta_row]
    flat = np.ascontiguousarray(spread).reshape(-1)
    entry = layout.scheme.entry_bytes
    channels = flat[: layout.head_dim * entry].reshape(layout.head_dim, entry)
    scale = _f16(
        channels[:, 0].astype(np.uint16) | (channels[:, 1].astype(np.uint16) << 8)
    )
    if layout.scheme.symmetric:
        return scale, -128.0 * scale
    minimum = _f16(
        channels[:, 2].astype(np.uint16) | (channels[:, 3].astype(np.uint16) << 8)
    )
    return scale, minimum


def value_meta(block: Array, layout: BlockLayout) -> tuple[Array, Array]:
    """(scale, offset) per (row, group) ``[block_size, groups]``."""
    groups = layout.scheme.value_groups(layout.head_dim)
    entry = layout.scheme.entry_bytes
    raw = block[:, layout.value_meta : layout.value_meta + groups * entry]
    raw = raw.reshape(block.shape[0], groups, entry).astype(np.uint16)
    scale = _f16(raw[..., 0] | (raw[..., 1] << 8))
    if layout.scheme.symmetric:
        return scale, -128.0 * scale
    return scale, _f16(raw[..., 2] | (raw[..., 3] << 8))


def dequantize_block(block: Array, layout: BlockLayout) -> tuple[Array, Array]:
    """Keys and values ``[block_size, head_dim]`` (float64) of one stored
    block, as the kernels decode them."""
    bits, d = layout.scheme.bits, layout.head_dim
    cb = layout.code_bytes
    k_codes = _unpack_codes(block[:, :cb], bits, d)
    v_codes = _unpack_codes(
        block[:, layout.value_codes : layout.value_codes + cb], bits, d
    )
    k_scale, k_offset = key_meta(block, layout)
    keys = k_codes * k_scale[None, :] + k_offset[None, :]
    v_scale, v_offset = value_meta(block, layout)
    group = layout.scheme.value_group or d
    values = v_codes * np.repeat(v_scale, group, axis=1) + np.repeat(
        v_offset, group, axis=1
    )
    return keys, values


@dataclass(frozen=True)
class AppendRuns:
    """One append's tokens grouped into *runs*, as every backend's quantise
    kernel takes them: consecutive tokens that land in one block at
    consecutive offsets (a sequence fills its blocks in order), each
    quantised together against the block's key scales."""

    tokens: Array
    """int64 [runs + 1]: the token index where each run starts, then the
    token count."""
    blocks: Array
    """int64 [runs]: each run's block."""
    offsets: Array
    """int64 [runs]: the slot offset of each run's first token."""

    @staticmethod
    def of(slot_mapping: Any, block_size: int) -> AppendRuns:
        slots = np.asarray(slot_mapping, np.int64).reshape(-1)
        blocks = slots // block_size
        offsets = slots - blocks * block_size
        # A run breaks where the block changes or the offsets are not
        # consecutive.
        breaks = np.flatnonzero(
            (blocks[1:] != blocks[:-1]) | (offsets[1:] != offsets[:-1] + 1)
        )
        starts = np.concatenate(([0], breaks + 1)) if slots.size else breaks
        tokens = np.concatenate((starts, [slots.size])).astype(np.int64)
        return AppendRuns(tokens, blocks[starts], offsets[starts])

    @property
    def count(self) -> int:
        return int(self.blocks.shape[0])
