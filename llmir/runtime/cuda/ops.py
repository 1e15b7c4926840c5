"""Host-side launchers: validate, copy the per-call metadata in one transfer,
pick a launch shape, launch.

Every function takes the *device* pool (``cuda.device_array`` of
`layout.pool_shape`, storage dtype) plus its `StorageKind`.  Per-call inputs
may be numpy arrays (validated, then copied) or device arrays already in the
right dtype and shape (used as they are: the benchmark keeps them resident).
Block tables and sequence lengths travel together in one int32 buffer.

This module imports numba.cuda at import time; import it only through
`llmir.runtime.cuda`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import ConfigError, DTypeError, ShapeError
from llmir.runtime.attention_checks import (
    check_attention_options,
    check_query_shape,
)
from llmir.runtime.cuda.attention_kernels import attention_kernels, shared_floats
from llmir.runtime.cuda.cache_kernels import cache_kernels
from llmir.runtime.cuda.codecs import codec
from llmir.runtime.cuda.loader import cuda_module, simulator_enabled
from llmir.runtime.cuda.validation import check_slot_mapping
from llmir.runtime.dtypes import F16, StorageKind
from llmir.runtime.validation import check_layer, validate_block_table

cuda = cuda_module()

SHARED_LIMIT_BYTES = 48 * 1024
"""Dynamic shared memory a block may use without an opt-in attribute."""

MIN_BLOCKS_PER_SPLIT = 16
"""A context split covers at least this many KV blocks (256 tokens at block
16): shorter splits cost more in merging than they gain in parallelism."""


def default_threads() -> int:
    """Threads per block: 128 on a GPU; 32 in the simulator, which runs every
    thread as a Python thread."""
    return 32 if simulator_enabled() else 128


def is_device_array(value: Any) -> bool:
    """True for numba device arrays (the simulator's fake ones included, for
    which `cuda.is_cuda_array` does not exist)."""
    return hasattr(value, "copy_to_host")


def kernel_view(pool: Any, kind: StorageKind, raw: bool = False) -> Any:
    """The pool as kernels index it: f16 bits reinterpreted as float16,
    unless the kernel copies raw bits."""
    dtype = kind.storage_dtype if raw else codec(kind).kernel_dtype
    return pool if pool.dtype == dtype else pool.view(dtype)


def pool_dims(pool: Any) -> tuple[int, int, int, int, int]:
    """(num_layers, num_blocks, num_heads, block_size, head_dim) of a pool."""
    if len(pool.shape) != 6 or pool.shape[3] != 2:
        raise ShapeError(
            f"kv pool must follow layout.pool_shape, got shape {pool.shape}"
        )
    num_layers, num_blocks, num_heads, _, block_size, head_dim = pool.shape
    return num_layers, num_blocks, num_heads, block_size, head_dim


def _to_device(name: str, value: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """A device array of `shape` and `dtype` from a host or device array."""
    if is_device_array(value):
        if tuple(value.shape) != shape or value.dtype != dtype:
            raise ShapeError(
                f"{name} on the device must be {np.dtype(dtype)} {shape}, "
                f"got {value.dtype} {tuple(value.shape)}"
            )
        return value
    host = np.asarray(value)
    if host.shape != shape:
        raise ShapeError(f"{name} must have shape {shape}, got {host.shape}")
    return cuda.to_device(np.ascontiguousarray(host, dtype=dtype))


def _input_mode(kind: StorageKind, dtype: Any) -> tuple[bool, Any]:
    """(raw, dtype kernels read) for K/V inputs of `dtype`: float32 is
    encoded; the storage representation (float16 or uint16 bits for f16,
    uint16 bits for bf16) is copied bit for bit."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return False, np.float32
    if kind.is_half and (dt == np.uint16 or (kind is F16 and dt == np.float16)):
        return True, np.uint16
    raise DTypeError(
        f"a {kind.name} pool accepts keys of float32 or its storage type, got {dt}"
    )


# ---------------------------------------------------------------------------
# Append and lookup


def append_kv(
    pool: Any,
    kind: StorageKind,
    keys: Any,
    values: Any,
    slot_mapping: npt.ArrayLike,
    *,
    layer: int | None,
    threads: int | None = None,
) -> None:
    """Scatter tokens' K/V into their slots.

    With ``layer`` given, keys/values are (num_tokens, H, D) for that layer;
    with ``layer=None`` they are (L, num_tokens, H, D): every layer of one
    step in one launch.  float32 inputs are encoded to the storage kind;
    inputs in the storage representation are copied bit for bit.
    """
    num_layers, num_blocks, num_heads, block_size, head_dim = pool_dims(pool)
    slots = check_slot_mapping(slot_mapping, num_slots=num_blocks * block_size)
    num_tokens = slots.shape[0]
    if layer is not None:
        check_layer(layer, num_layers, "pool")
        shape: tuple[int, ...] = (num_tokens, num_heads, head_dim)
    else:
        shape = (num_layers, num_tokens, num_heads, head_dim)
    raw, in_dtype = _input_mode(kind, keys.dtype)
    if values.dtype != keys.dtype:
        raise DTypeError(f"keys are {keys.dtype} but values are {values.dtype}")
    if not is_device_array(keys) and keys.dtype == np.float16:
        keys, values = (
            np.asarray(keys).view(np.uint16),
            np.asarray(values).view(np.uint16),
        )
    d_keys = _to_device("keys", keys, shape, in_dtype)
    d_values = _to_device("values", values, shape, in_dtype)
    if num_tokens == 0:
        return
    d_slots = cuda.to_device(slots)
    kernels = cache_kernels(kind, raw)
    view = kernel_view(pool, kind, raw)
    nthreads = threads or default_threads()
    if layer is not None:
        kernels.append_layer[num_tokens, nthreads](
            view[layer], d_keys, d_values, d_slots
        )
    else:
        kernels.append_all_layers[(num_tokens, num_layers), nthreads](
            view, d_keys, d_values, d_slots
        )


def metadata_to_device(
    table: npt.NDArray[np.int32], lens: npt.NDArray[np.int32]
) -> tuple[Any, Any]:
    """Copy seq_lens and the block table in one transfer; return device views
    (table, lens)."""
    batch, max_blocks = table.shape
    width = max(max_blocks, 1)
    packed = np.full(batch + batch * width, -1, dtype=np.int32)
    packed[:batch] = lens
    packed[batch : batch + table.size] = table.ravel()
    d_packed = cuda.to_device(packed)
    return d_packed[batch:].reshape(batch, width), d_packed[:batch]


def _validated_table(
    pool: Any, block_table: npt.ArrayLike, seq_lens: npt.ArrayLike
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    _, num_blocks, _, block_size, _ = pool_dims(pool)
    width = np.shape(block_table)[-1] if np.ndim(block_table) == 2 else 0
    return validate_block_table(
        block_table,
        seq_lens,
        block_size=block_size,
        num_blocks=num_blocks,
        # A bare pool has no length limit beyond what the table covers.
        max_seq_len=width * block_size,
    )


def gather_kv(
    pool: Any,
    kind: StorageKind,
    layer: int,
    block_table: npt.ArrayLike,
    seq_lens: npt.ArrayLike,
    *,
    max_len: int | None = None,
    as_float32: bool = True,
    threads: int | None = None,
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Keys and values (batch, max_len, H, D) of one layer, zero past each
    sequence's end (``max_len`` defaults to ``max(seq_lens)``).

    Element type as `PagedKVCache.lookup_kv`: float32, except float16 for an
    f16 pool when ``as_float32`` is False.
    """
    num_layers, _, num_heads, _, head_dim = pool_dims(pool)
    check_layer(layer, num_layers, "pool")
    table, lens = _validated_table(pool, block_table, seq_lens)
    batch = lens.shape[0]
    longest = int(lens.max()) if batch else 0
    if max_len is None:
        max_len = longest
    if max_len < longest:
        raise ShapeError(
            f"max_len {max_len} is shorter than the longest sequence, {longest}"
        )
    raw = kind is F16 and not as_float32
    out_dtype = np.uint16 if raw else np.float32
    shape = (batch, max_len, num_heads, head_dim)
    if batch == 0 or max_len == 0:
        keys = np.zeros(shape, dtype=out_dtype)
        values = np.zeros(shape, dtype=out_dtype)
    else:
        d_table, d_lens = metadata_to_device(table, lens)
        out_k = cuda.device_array(shape, dtype=out_dtype)
        out_v = cuda.device_array(shape, dtype=out_dtype)
        cache_kernels(kind, raw).gather[(max_len, batch), threads or default_threads()](
            kernel_view(pool, kind, raw)[layer], d_table, d_lens, out_k, out_v
        )
        keys, values = out_k.copy_to_host(), out_v.copy_to_host()
    if raw:
        return keys.view(np.float16), values.view(np.float16)
    return keys, values


# ---------------------------------------------------------------------------
# Attention


def sm_count() -> int:
    """Streaming multiprocessors of the current device (1 in the simulator)."""
    if simulator_enabled():
        return 1
    return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


def choose_splits(batch: int, num_kv_heads: int, max_blocks_used: int) -> int:
    """Context splits for decode: enough thread blocks to fill the GPU twice
    over when batch x kv heads alone cannot, never splits shorter than
    MIN_BLOCKS_PER_SPLIT blocks."""
    work = batch * num_kv_heads
    target = 2 * sm_count()
    if work >= target:
        return 1
    by_length = max(1, max_blocks_used // MIN_BLOCKS_PER_SPLIT)
    return max(1, min(by_length, math.ceil(target / max(work, 1))))


@dataclass
class AttentionPlan:
    """One validated attention call, ready to launch on any layer.

    Block tables and lengths are the same for every layer of a step, so a
    plan copies them to the device once (one transfer) and allocates the
    split-context buffers once; `run` then only launches kernels.
    """

    kind: StorageKind
    q_shape: tuple[int, int, int, int]
    grid: tuple[int, int, int]
    threads: int
    shared_bytes: int
    num_splits: int
    scalars: tuple[Any, ...]
    """scale, q_tile, parts, blocks_per_split, causal, window, soft_cap."""
    table: Any
    lens: Any
    part_out: Any
    part_max: Any
    part_sum: Any

    def run(self, pool: Any, layer: int, query: Any, out: Any) -> None:
        """Launch on `layer` of `pool`: float32 device arrays `query` and
        `out` of shape ``q_shape``."""
        batch, num_new, num_q_heads, head_dim = self.q_shape
        if batch == 0 or num_new == 0:
            return
        kernels = attention_kernels(self.kind)
        kernels.attention[self.grid, self.threads, 0, self.shared_bytes](
            query,
            kernel_view(pool, self.kind)[layer],
            self.table,
            self.lens,
            *self.scalars,
            out,
            self.part_out,
            self.part_max,
            self.part_sum,
        )
        if self.num_splits > 1:
            merge_threads = min(self.threads, head_dim)
            kernels.merge_splits[(batch, num_q_heads), merge_threads](
                self.part_out, self.part_max, self.part_sum, out
            )


def plan_attention(
    pool: Any,
    kind: StorageKind,
    q_shape: tuple[int, ...],
    block_table: npt.ArrayLike,
    seq_lens: npt.ArrayLike,
    scale: float | None = None,
    *,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    num_splits: int | None = None,
    threads: int | None = None,
    q_tile: int | None = None,
) -> AttentionPlan:
    """Validate everything about an attention call but the query's values,
    choose the launch shape and stage the metadata on the device."""
    _, _, num_kv_heads, block_size, head_dim = pool_dims(pool)
    table, lens = _validated_table(pool, block_table, seq_lens)
    check_query_shape(q_shape, lens.shape[0], num_kv_heads, head_dim)
    batch, num_new, num_q_heads, _ = q_shape
    options = check_attention_options(scale, head_dim, sliding_window, logits_soft_cap)
    # The kernels take 0 for "no window" / "no cap".
    scale = options.scale
    window = options.sliding_window or 0
    soft_cap = options.logits_soft_cap or 0.0

    group = num_q_heads // num_kv_heads
    nthreads = threads or default_threads()
    decode = num_new == 1
    if q_tile is None:
        q_tile = 1 if decode else max(1, min(num_new, 16 // group))
    max_blocks_used = -(-int(lens.max()) // block_size) if batch else 0
    if num_splits is None:
        num_splits = (
            choose_splits(batch, num_kv_heads, max_blocks_used) if decode else 1
        )
    if num_splits < 1 or (num_splits > 1 and not decode):
        raise ConfigError(
            f"num_splits {num_splits} is invalid: >= 1, and 1 unless Tq == 1"
        )
    # No empty trailing splits: recompute the count from the split length.
    blocks_per_split = -(-max(max_blocks_used, 1) // num_splits)
    num_splits = -(-max(max_blocks_used, 1) // blocks_per_split)

    rows = q_tile * group
    parts = max(1, min(head_dim, nthreads // (rows * block_size)))
    shared_bytes = 4 * shared_floats(rows, block_size, head_dim, parts)
    if shared_bytes > SHARED_LIMIT_BYTES:
        raise ConfigError(
            f"attention needs {shared_bytes} bytes of shared memory per thread block "
            f"({rows} query rows, block_size {block_size}, head_dim {head_dim}), "
            f"the limit is {SHARED_LIMIT_BYTES}"
        )

    if batch:
        d_table, d_lens = metadata_to_device(table, lens)
    else:
        d_table = d_lens = None
    if num_splits > 1:
        part_out = cuda.device_array(
            (batch, num_q_heads, num_splits, head_dim), np.float32
        )
        part_max = cuda.device_array((batch, num_q_heads, num_splits), np.float32)
        part_sum = cuda.device_array((batch, num_q_heads, num_splits), np.float32)
    else:  # unused by the kernel; numba only needs arrays of the right rank
        part_out = cuda.device_array((1, 1, 1, 1), np.float32)
        part_max = part_sum = cuda.device_array((1, 1, 1), np.float32)
    num_q_tiles = -(-num_new // q_tile) if num_new else 0
    scalars = (
        np.float32(scale),
        np.int32(q_tile),
        np.int32(parts),
        np.int32(blocks_per_split),
        np.int32(bool(causal)),
        np.int32(window),
        np.float32(soft_cap),
    )
    return AttentionPlan(
        kind=kind,
        q_shape=(batch, num_new, num_q_heads, head_dim),
        grid=(batch * num_q_tiles, num_kv_heads, num_splits),
        threads=nthreads,
        shared_bytes=shared_bytes,
        num_splits=num_splits,
        scalars=scalars,
        table=d_table,
        lens=d_lens,
        part_out=part_out,
        part_max=part_max,
        part_sum=part_sum,
    )


def paged_attention_on_pool(
    pool: Any,
    kind: StorageKind,
    layer: int,
    query: Any,
    block_table: npt.ArrayLike,
    seq_lens: npt.ArrayLike,
    scale: float | None = None,
    *,
    return_device: bool = False,
    **options: Any,
) -> Any:
    """Paged attention of one layer of a device pool, with the semantics of
    `llmir.runtime.attention.paged_attention`.

    ``query`` is (batch, Tq, num_q_heads, D) (Tq = 1 is decode), numpy float32
    or float16, or a float32 device array.  Returns the query's shape and
    dtype (a float32 device array with ``return_device=True``).  `options`
    are those of `plan_attention`: causal, sliding_window, logits_soft_cap,
    and the launch overrides num_splits, threads, q_tile.
    """
    num_layers = pool_dims(pool)[0]
    check_layer(layer, num_layers, "pool")
    q_dtype = (
        np.dtype(np.float32) if is_device_array(query) else np.asarray(query).dtype
    )
    if q_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise DTypeError(
            f"query dtype {q_dtype} is not supported, expected float32 or float16"
        )
    q_shape = tuple(query.shape)
    plan = plan_attention(pool, kind, q_shape, block_table, seq_lens, scale, **options)
    d_query = _to_device("query", query, q_shape, np.float32)
    out = cuda.device_array(q_shape, dtype=np.float32)
    plan.run(pool, layer, d_query, out)
    if return_device:
        return out
    return out.copy_to_host().astype(q_dtype, copy=False)
