"""`PagedKVCache`: the paged KV cache of llmir.

Composition (one job per part):
  * `BlockAllocator` (allocator.py): the fixed pool of block ids, ref counts;
  * `SequenceTable` (sequences.py): block tables, per-layer lengths, slot
    mapping — all host-side bookkeeping, shared by every device;
  * a `KVStorage` (storage.py): the pool tensor and the copy kernels —
    `CPUStorage` here, the CUDA backend in `llmir.runtime.cuda`.

Accepted input element types (keys and values must agree):
  * float32 for every storage type (encoded with round to nearest even);
  * the storage representation: ``np.float16`` or ``uint16`` bit patterns for
    f16, ``uint16`` bit patterns for bf16 (copied bit for bit).
NaN and Inf are stored as given (f16/bf16 keep them; NaN stays NaN).

`lookup_kv` returns, by default, values in the narrowest numpy type that
holds them exactly: float32 for f32, ``np.float16`` for f16, and float32 for
bf16 (numpy has no bfloat16; every bf16 value is a float32).  Pass
``as_float32=True`` to get float32 for every storage type.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import ConfigError, DeviceError, DTypeError, ShapeError
from llmir.runtime.allocator import BlockAllocator
from llmir.runtime.cpu_storage import CPUStorage
from llmir.runtime.dtypes import F16, F32, StorageKind, storage_kind
from llmir.runtime.sequences import SequenceTable
from llmir.runtime.storage import KVStorage, lookup_dtype
from llmir.runtime.validation import check_layer, validate_block_table

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


class PagedKVCache:
    """A paged KV cache: one block table per sequence, shared by all layers,
    over a pool of `num_blocks` blocks allocated once.

    Size the pool with `num_blocks` or with `memory_budget_bytes` (the most
    blocks that fit), not both; with neither, the pool holds one sequence of
    `max_seq_len` tokens.
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        block_size: int,
        max_seq_len: int,
        dtype: str | StorageKind | npt.DTypeLike = "f32",
        *,
        num_blocks: int | None = None,
        memory_budget_bytes: int | None = None,
        device: str = "cpu",
    ) -> None:
        params: tuple[tuple[str, object], ...] = (
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("head_dim", head_dim),
            ("block_size", block_size),
            ("max_seq_len", max_seq_len),
        )
        for name, value in params:
            _require_positive_int(name, value)
        kind = storage_kind(dtype)
        block_bytes = num_layers * num_heads * 2 * block_size * head_dim * kind.itemsize
        if num_blocks is not None and memory_budget_bytes is not None:
            raise ConfigError("give num_blocks or memory_budget_bytes, not both")
        if memory_budget_bytes is not None:
            num_blocks = memory_budget_bytes // block_bytes
            if num_blocks <= 0:
                raise ConfigError(
                    f"memory_budget_bytes {memory_budget_bytes} is less than one "
                    f"block ({block_bytes} bytes)"
                )
        elif num_blocks is None:
            num_blocks = -(-max_seq_len // block_size)
        if num_blocks <= 0 or num_blocks > np.iinfo(np.int32).max // block_size:
            raise ConfigError(
                f"num_blocks must be in [1, {np.iinfo(np.int32).max // block_size}], "
                f"got {num_blocks}"
            )
        self._num_layers = int(num_layers)
        self._num_heads = int(num_heads)
        self._head_dim = int(head_dim)
        self._block_size = int(block_size)
        self._max_seq_len = int(max_seq_len)
        self._num_blocks = int(num_blocks)
        self._kind = kind
        self._block_bytes = block_bytes
        self._device = device
        self._allocator = BlockAllocator(self._num_blocks, self._block_size)
        self._seqs = SequenceTable(self._allocator, self._num_layers, self._max_seq_len)
        self._storage: KVStorage = _create_storage(
            device,
            num_layers=self._num_layers,
            num_blocks=self._num_blocks,
            num_heads=self._num_heads,
            block_size=self._block_size,
            head_dim=self._head_dim,
            kind=kind,
        )

    # -- configuration (read-only) --------------------------------------------

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def num_heads(self) -> int:
        return self._num_heads

    @property
    def head_dim(self) -> int:
        return self._head_dim

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def kind(self) -> StorageKind:
        return self._kind

    @property
    def device(self) -> str:
        return self._device

    @property
    def kv_pool(self) -> Any:
        """The pool, laid out as in `llmir.runtime.layout`."""
        return self._storage.kv_pool

    @property
    def allocator(self) -> BlockAllocator:
        return self._allocator

    @property
    def storage(self) -> KVStorage:
        return self._storage

    @property
    def sequences(self) -> SequenceTable:
        """The host-side bookkeeping (block tables, lengths, slot mapping)."""
        return self._seqs

    # -- sequences -------------------------------------------------------------

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)

    @property
    def seq_ids(self) -> list[int]:
        return self._seqs.seq_ids

    def seq_len(self, seq_id: int) -> int:
        """Tokens of `seq_id` (the most written to any layer)."""
        return self._seqs.seq_len(seq_id)

    def layer_lens(self, seq_id: int) -> IntArray:
        """Tokens written to each layer of `seq_id`."""
        return self._seqs.layer_lens(seq_id)

    def blocks_of(self, seq_id: int) -> IntArray:
        """The physical blocks of `seq_id` in logical order."""
        return self._seqs.blocks_of(seq_id)

    def block_table(self, seq_ids: Any) -> tuple[IntArray, IntArray]:
        """(table int32 ``[batch, max_blocks]`` padded with -1, lens int32
        ``[batch]``) for `seq_ids`; UnknownSequenceError for an unknown id."""
        return self._seqs.block_table(seq_ids)

    def free_sequence(self, seq_id: int) -> None:
        """Release the blocks of `seq_id` and forget it."""
        self._seqs.free_sequence(seq_id)

    def reset(self) -> None:
        """Forget every sequence and free every block.  The pool's bytes are
        left as they are (appends overwrite them)."""
        self._seqs.reset()

    def stats(self) -> CacheStats:
        used = self._allocator.num_used
        return CacheStats(
            blocks_total=self._num_blocks,
            blocks_used=used,
            blocks_free=self._allocator.num_free,
            num_sequences=len(self._seqs),
            tokens_stored=self._seqs.tokens_stored(),
            pool_bytes=self._num_blocks * self._block_bytes,
            bytes_used=used * self._block_bytes,
            slots_allocated=used * self._block_size,
            fragmentation_slots=used * self._block_size
            - self._allocator.filled_slots(),
        )

    def snapshot(self) -> tuple[Any, ...]:
        """The complete bookkeeping state, comparable with ``==`` (tests use
        it, with the pool's bytes, to prove a rejected call changed nothing)."""
        return self._seqs.snapshot()

    # -- append ----------------------------------------------------------------

    def append_kv(
        self, keys: Any, values: Any, seq_ids: Any, layer: int = 0
    ) -> IntArray:
        """Append ``T`` tokens to each sequence of the batch, in one layer.

        keys/values ``[batch, T, H, D]``; seq_ids ``[batch]`` distinct ids
        (an unknown id starts a new sequence).  Returns the physical block of
        every appended token, int32 ``[batch, T]``.  Tokens go to positions
        ``[written, written + T)`` of that layer (see `sequences` for the
        length semantics).  An empty batch or ``T == 0`` is a no-op.
        """
        check_layer(layer, self._num_layers)
        k, v = self._checked_inputs(keys, values, rank=4, seq_ids=seq_ids)
        batch, T = k.shape[0], k.shape[1]
        if batch == 0 or T == 0:
            return np.zeros((batch, T), np.int32)
        plan = self._seqs.plan_append(seq_ids, T, layer)
        blocks, slots = self._seqs.commit_append(plan)
        self._storage.write(
            layer,
            k.reshape(1, batch * T, *k.shape[2:]),
            v.reshape(1, batch * T, *v.shape[2:]),
            slots,
        )
        return blocks

    def append_kv_all_layers(self, keys: Any, values: Any, seq_ids: Any) -> IntArray:
        """Append one step to every layer in a single kernel call.

        keys/values ``[L, batch, T, H, D]``; every listed sequence must have
        all layers level (no step half-appended by `append_kv`).  Returns the
        physical block of every appended token, int32 ``[batch, T]``.
        """
        k, v = self._checked_inputs(keys, values, rank=5, seq_ids=seq_ids)
        L, batch, T = k.shape[0], k.shape[1], k.shape[2]
        if batch == 0 or T == 0:
            return np.zeros((batch, T), np.int32)
        plan = self._seqs.plan_append(seq_ids, T, None)
        blocks, slots = self._seqs.commit_append(plan)
        self._storage.write(
            None,
            k.reshape(L, batch * T, *k.shape[3:]),
            v.reshape(L, batch * T, *v.shape[3:]),
            slots,
        )
        return blocks

    # -- lookup ----------------------------------------------------------------

    def validate_block_table(
        self, block_table: Any, seq_lens: Any
    ) -> tuple[IntArray, IntArray]:
        """`llmir.runtime.validation.validate_block_table` against this pool."""
        return validate_block_table(
            block_table,
            seq_lens,
            block_size=self._block_size,
            num_blocks=self._num_blocks,
            max_seq_len=self._max_seq_len,
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

        `out`: optional (keys, values) buffers, C-contiguous, of that element
        type and shape ``[batch, N, H, D]`` with ``N >= max(seq_lens)``; they
        are filled (zero past each length) and returned.  Reusing buffers
        avoids the page faults of fresh arrays, about half the cost of a
        large lookup.
        """
        check_layer(layer, self._num_layers)
        table, lens = self.validate_block_table(block_table, seq_lens)
        max_len = int(lens.max()) if lens.size else 0
        if out is None:
            return self._storage.gather(layer, table, lens, max_len, as_float32)
        self._check_out(out, table.shape[0], max_len, as_float32)
        if isinstance(self._storage, CPUStorage):
            return self._storage.gather(
                layer, table, lens, out[0].shape[1], as_float32, out=out
            )
        # Backends without `out` support (the GPU's gather returns host
        # arrays): copy into the caller's buffers.
        keys, values = self._storage.gather(
            layer, table, lens, out[0].shape[1], as_float32
        )
        out[0][...] = keys
        out[1][...] = values
        return out

    def lookup_sequences(
        self, seq_ids: Any, layer: int = 0, *, as_float32: bool = False
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """`lookup_kv` of the block table of `seq_ids`."""
        table, lens = self.block_table(seq_ids)
        return self.lookup_kv(table, lens, layer, as_float32=as_float32)

    # -- checks ----------------------------------------------------------------

    def _check_out(
        self, out: tuple[Any, Any], batch: int, max_len: int, as_float32: bool
    ) -> None:
        want = lookup_dtype(self._kind, as_float32)
        for name, buf in zip(("keys", "values"), out, strict=True):
            if not isinstance(buf, np.ndarray):
                raise DTypeError(f"out {name} must be a numpy array")
            arr: npt.NDArray[Any] = buf
            if arr.dtype != want:
                raise DTypeError(f"out {name} must be {want}, got {arr.dtype}")
            if (
                arr.ndim != 4
                or arr.shape[0] != batch
                or arr.shape[1] < max_len
                or arr.shape[2:] != (self._num_heads, self._head_dim)
            ):
                raise ShapeError(
                    f"out {name} has shape {arr.shape}, expected ({batch}, >= "
                    f"{max_len}, {self._num_heads}, {self._head_dim})"
                )
            if not arr.flags.c_contiguous or not arr.flags.writeable:
                raise ShapeError(f"out {name} must be C-contiguous and writeable")
        if out[0].shape != out[1].shape:
            raise ShapeError("out keys and values differ in shape")

    def _checked_inputs(
        self, keys: Any, values: Any, *, rank: int, seq_ids: Any
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        if not isinstance(keys, np.ndarray) or not isinstance(values, np.ndarray):
            raise DTypeError(
                f"keys and values must be numpy arrays, got {type(keys).__name__} "
                f"and {type(values).__name__}"
            )
        k: npt.NDArray[Any] = keys
        v: npt.NDArray[Any] = values
        what = "[L, batch, T, H, D]" if rank == 5 else "[batch, T, H, D]"
        for name, arr in (("keys", k), ("values", v)):
            if arr.ndim != rank:
                raise ShapeError(
                    f"{name} must be {rank}-D {what}, got shape {arr.shape}"
                )
        if k.shape != v.shape:
            raise ShapeError(
                f"keys shape {k.shape} differs from values shape {v.shape}"
            )
        if rank == 5 and k.shape[0] != self._num_layers:
            raise ShapeError(
                f"keys carry {k.shape[0]} layers, the cache has {self._num_layers}"
            )
        if k.shape[-2] != self._num_heads:
            raise ShapeError(
                f"keys have {k.shape[-2]} heads, the cache has {self._num_heads}"
            )
        if k.shape[-1] != self._head_dim:
            raise ShapeError(
                f"keys have head_dim {k.shape[-1]}, the cache has {self._head_dim}"
            )
        if k.dtype != v.dtype:
            raise DTypeError(f"keys are {k.dtype} but values are {v.dtype}")
        accepted: list[np.dtype[Any]] = [np.dtype(np.float32)]
        if self._kind is F16:
            accepted += [np.dtype(np.float16), np.dtype(np.uint16)]
        elif self._kind is not F32:
            accepted.append(np.dtype(np.uint16))
        if k.dtype not in accepted:
            raise DTypeError(
                f"a {self._kind.name} cache accepts keys of "
                f"{', '.join(str(d) for d in accepted)}, got {k.dtype}"
            )
        batch = k.shape[-4]
        n_ids = np.shape(seq_ids)
        if n_ids != (batch,):
            raise ShapeError(
                f"seq_ids has shape {n_ids}, expected ({batch},) for the batch"
            )
        return np.ascontiguousarray(k), np.ascontiguousarray(v)


def _require_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int | np.integer) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _create_storage(device: str, **params: Any) -> KVStorage:
    if device == "cpu":
        return CPUStorage(**params)
    if device == "cuda":
        try:
            cuda = importlib.import_module("llmir.runtime.cuda")
        except ImportError as exc:
            raise DeviceError(
                f"device='cuda' needs the CUDA backend llmir.runtime.cuda and "
                f"numba-cuda (pip install 'llmir[gpu]'): {exc}"
            ) from exc
        create = getattr(cuda, "create_storage", None)
        if create is None:
            raise DeviceError("llmir.runtime.cuda provides no create_storage()")
        return create(**params)
    raise DeviceError(f"unknown device {device!r}, expected 'cpu' or 'cuda'")
