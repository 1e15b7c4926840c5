"""`SwapSpace`: the slower tier that swapped-out sequences' blocks wait in.

A sequence swapped out (`PagedKVCache.swap_out`) gives its pool blocks
back and keeps its keys and values here, one slot per block, until
`swap_in` copies them into whatever pool blocks are free then (ids may
differ; its block table is rewritten), bit for bit: preemption without
recomputation, as vLLM swaps to CPU memory.

The tier is an array ``[slots, L, H, 2, B, D]`` of the pool's storage type,
block-major so that a block is one contiguous run:

* a CPU cache's tier is a file (`np.memmap`) in a directory the user names
  (a temporary directory by default): a machine with little RAM swaps to
  disk, and the page cache makes it fast while there is room;
* a CUDA cache's tier is host memory.

Slots are taken and given back like pool blocks (a stack, all or nothing);
`SwapSpaceFullError` names the slots asked for and the slots free.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import ConfigError, SwapSpaceFullError
from llmir.runtime.geometry import CacheGeometry, positive_int

IntArray = npt.NDArray[np.int32]


class SwapSpace:
    """`num_slots` block-sized slots on the host: in a file under
    `directory`, or in memory when `directory` is None."""

    def __init__(
        self, geometry: CacheGeometry, num_slots: int, directory: str | None
    ) -> None:
        self.path: str | None = None  # first: __del__ runs even if a check fails
        self.num_slots = positive_int("swap_blocks", num_slots)
        self.geometry = geometry
        shape = (self.num_slots, *geometry.block_shape())
        dtype = geometry.element_type.storage_dtype
        if directory is None:
            self.blocks: npt.NDArray[Any] = np.empty(shape, dtype)
        else:
            if not os.path.isdir(directory):
                raise ConfigError(f"swap directory {directory!r} is not a directory")
            handle, path = tempfile.mkstemp(
                prefix="llmir-swap-", suffix=".bin", dir=directory
            )
            os.close(handle)
            self.path = path
            memmap = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
            # A plain ndarray view of the mapping: kernels take it as it is.
            self.blocks = np.asarray(memmap)
        self._free: IntArray = np.arange(self.num_slots - 1, -1, -1, dtype=np.int32)
        self._num_free = self.num_slots

    @property
    def num_free(self) -> int:
        return self._num_free

    @property
    def num_used(self) -> int:
        return self.num_slots - self._num_free

    @property
    def slot_bytes(self) -> int:
        return self.geometry.bytes_per_block

    def allocate(self, count: int) -> IntArray:
        """`count` free slots, all or none."""
        if count > self._num_free:
            raise SwapSpaceFullError(
                f"swapping out needs {count} slots of the swap space, only "
                f"{self._num_free} of {self.num_slots} are free "
                f"({self._num_free * self.slot_bytes} of "
                f"{self.num_slots * self.slot_bytes} bytes)"
            )
        top = self._num_free - count
        slots = self._free[top : self._num_free][::-1].copy()
        self._num_free = top
        return slots

    def release(self, slots: IntArray) -> None:
        n = slots.size
        self._free[self._num_free : self._num_free + n] = slots
        self._num_free += n

    def reset(self) -> None:
        self._free[:] = np.arange(self.num_slots - 1, -1, -1, dtype=np.int32)
        self._num_free = self.num_slots

    def close(self) -> None:
        """Delete the backing file (the space is unusable afterwards)."""
        if self.path is not None:
            del self.blocks
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None

    def __del__(self) -> None:
        self.close()


@dataclass
class SwapTier:
    """A `SwapSpace` and the backend's copies in and out of it."""

    space: SwapSpace
    write_out: Callable[[IntArray, npt.NDArray[Any], IntArray], None]
    """`Backend.swap_out`: pool blocks -> tier slots."""
    read_in: Callable[[npt.NDArray[Any], IntArray, IntArray], None]
    """`Backend.swap_in`: tier slots -> pool blocks."""
    swaps_out: int = 0
    swaps_in: int = 0
    bytes_moved: int = 0
