"""The seam between bookkeeping and data: the `Backend` protocol, and the one
place a device name picks a backend.

`PagedKVCache` does all host-side work itself (allocator, block tables,
lengths, slot mapping, every argument check) and hands a backend only what
touches the pool: write, copy, gather and attention.  A backend is chosen once,
when the cache is created, by `create_backend`; no other code branches on a
device name.

What a backend receives is already valid (`llmir.runtime.validation`):

* the pool follows `llmir.runtime.geometry` exactly;
* a *slot mapping* is int32 ``[N]``, one in-range slot per token
  (``slot = block * block_size + offset``), computed by the bookkeeping;
* `write` gets keys/values ``[L, N, H, D]`` (``L = num_layers`` for a
  whole-step write, 1 for one layer) of float32 (to be encoded) or of one of
  the element type's `raw_input_dtypes` (copied bit for bit);
* `copy_blocks` gets disjoint, in-range block ids; `swap_out`/`swap_in`
  in-range block ids and free (or held) tier slots;
* `gather` and `attention` get a `BlockTable` and a layer in range;
  `attention` a query whose shape and dtype `check_query` accepted and
  `AttentionOptions`;
* `out` buffers, when given, have the right shape and dtype.

Adding a backend: a class with these methods, and a branch in
`create_backend` (see ``docs/adding-a-backend.md``).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

from llmir.errors import DeviceError
from llmir.runtime.geometry import CacheGeometry
from llmir.runtime.validation import AttentionOptions, BlockTable

DEVICES = ("cpu", "cuda")


@runtime_checkable
class Backend(Protocol):
    """The pool of one cache on one device, and the kernels over it."""

    @property
    def device(self) -> str:
        """The device name this backend was chosen for."""
        ...

    @property
    def kv_pool(self) -> Any:
        """The pool array (numpy on the CPU, a device array on a GPU)."""
        ...

    def as_array(self, value: Any) -> Any:
        """`value` as an array this backend's kernels take without a copy
        where possible (host or device memory); it has ``.shape`` and a
        numpy ``.dtype``."""
        ...

    def write(
        self, layer: int | None, keys: Any, values: Any, slot_mapping: Any
    ) -> None:
        """Scatter tokens into the pool: to `layer`, or to every layer when
        `layer` is None."""
        ...

    def copy_blocks(self, src: Any, dst: Any, tokens: int | None) -> None:
        """Copy block ``src[i]`` to block ``dst[i]`` in every layer, keys and
        values as stored: the whole block, or only its first `tokens` slots.
        int32 ids, ``src`` and ``dst`` disjoint (copy-on-write and
        partial-prefix reuse copy into freshly allocated blocks)."""
        ...

    def swap_out(self, block_ids: Any, tier: Any, slots: Any) -> None:
        """Copy pool blocks ``block_ids[i]`` (every layer) to the host tier
        ``tier[slots[i]]`` (`llmir.runtime.swap.SwapSpace.blocks`)."""
        ...

    def swap_in(self, tier: Any, slots: Any, block_ids: Any) -> None:
        """Copy ``tier[slots[i]]`` back into pool blocks ``block_ids[i]``."""
        ...

    def gather(
        self,
        layer: int,
        table: BlockTable,
        as_float32: bool,
        out: tuple[Any, Any] | None,
    ) -> tuple[Any, Any]:
        """Keys and values ``[batch, max_len, H, D]`` of one layer as host
        arrays (zero past each sequence's length), into `out` if given."""
        ...

    def attention(
        self,
        layer: int,
        query: Any,
        table: BlockTable,
        options: AttentionOptions,
        out: Any | None,
        block_mass: Any | None = None,
    ) -> Any:
        """Paged attention of `query` over one layer (semantics in
        `llmir.runtime.attention`), into `out` if given.  `block_mass`, a
        host float32 ``[batch, H, width]`` array, if given, is filled with
        each logical block's attention mass (heavy-hitter pruning)."""
        ...


def create_backend(device: str, geometry: CacheGeometry, num_blocks: int) -> Backend:
    """The backend of `device` with a zeroed pool of `num_blocks` blocks.

    The CUDA backend is imported only here and only when asked for, so
    ``import llmir`` never loads numba.cuda; without a GPU or numba-cuda it
    raises `DeviceError` saying what is missing.
    """
    if device == "cpu":
        from llmir.runtime.cpu import CPUBackend

        return CPUBackend(geometry, num_blocks)
    if device == "cuda":
        try:
            cuda = importlib.import_module("llmir.runtime.cuda")
        except ImportError as exc:  # pragma: no cover - a broken install
            raise DeviceError(
                f"device='cuda' needs llmir.runtime.cuda and numba-cuda "
                f"(pip install 'llmir[gpu]'): {exc}"
            ) from exc
        return cuda.CUDABackend(geometry, num_blocks)
    raise DeviceError(
        f"unknown device {device!r}, expected one of {', '.join(DEVICES)}"
    )
