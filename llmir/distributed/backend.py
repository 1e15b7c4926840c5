"""`ShardedBackend`: the `Backend` of a cache whose pool lives in Ray actors.

The driver's `PagedKVCache` keeps all the bookkeeping (allocator, block
tables, lengths, slot mappings, prefix hashes) and validates every argument,
as it does for a local pool; this backend only fans the data operations out
to the shards (`llmir.distributed.actor.ShardActor`) and joins their
answers:

* write: each shard gets its heads (or, by layers, the owner of the layer
  gets the keys) and the one slot mapping;
* copy_blocks: every shard copies the same block ids;
* gather / attention: each shard answers for its heads (joined along the
  head axis) or the owner of the layer answers.  Attention on a CPU shard
  is told how the whole cache would split long contexts, so its numbers are
  bit-identical to the unsharded cache's.

What travels per call: the shard's slice of keys/values (a copy, since a
head slice is strided), the slot mapping or block table (small), the
query slice, and the outputs back, through Ray's object store (zero-copy
reads on one node for arrays over 100 KiB, which arrive read-only).

Faults: every call waits at most `timeout_s` seconds per shard (starting,
which warms the kernels, `START_TIMEOUT_S`).  A shard
that dies, hangs past that or raises ends the cache: the call raises
`ShardError` naming the shard, and so does every later call, until the
cache is closed and a new one built.  The driver's bookkeeping is never
left half-updated by a failed call, only out of step with the lost data.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.distributed.actor import ShardActor
from llmir.distributed.sharding import ShardPlan
from llmir.errors import DeviceError, ShardError
from llmir.runtime.validation import AttentionOptions, BlockTable

Array = npt.NDArray[Any]

DEFAULT_TIMEOUT_S = 10.0
"""How long one call may wait for a shard before it counts as hung."""

START_TIMEOUT_S = 600.0
"""How long a shard may take to start (importing llmir, warming the
kernels: compiling them on a cold Numba cache takes a minute or two)."""


def ray_module() -> Any:
    """Ray, started on this machine if it is not running yet (a cluster the
    caller connected to is used as it is)."""
    try:
        ray = importlib.import_module("ray")
    except ImportError as exc:
        raise DeviceError(
            "a sharded cache needs Ray: pip install 'llmir[distributed]'"
        ) from exc
    if not ray.is_initialized():
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    return ray


class ShardedBackend:
    """The pool of one cache, cut by `plan`, in one Ray actor per shard."""

    def __init__(
        self,
        plan: ShardPlan,
        num_blocks: int,
        device: str = "cpu",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        block_mass: bool = False,
    ) -> None:
        """`block_mass`: attention will be asked for each block's mass
        (heavy-hitter pruning), so the shards warm that kernel too."""
        self._ray = ray_module()
        self.plan = plan
        self.device = device
        self.timeout_s = float(timeout_s)
        self._failure: str | None = None
        g = plan.shard_geometry()
        args = (
            g.element_type.name,
            g.num_layers,
            g.num_heads,
            g.head_dim,
            g.block_size,
            g.max_seq_len,
        )
        remote = self._ray.remote(ShardActor).options(
            num_cpus=0, num_gpus=1 if device == "cuda" else 0
        )
        self.actors = [
            remote.remote(args, num_blocks, device, block_mass)
            for _ in range(plan.shards)
        ]
        # Starting compiles (or loads) the kernels: minutes on a cold Numba
        # cache, so the start has its own, longer limit.
        self._gather_all(
            [a.ready.remote() for a in self.actors], "start", START_TIMEOUT_S
        )

    # -- the Backend protocol ----------------------------------------------------

    @property
    def kv_pool(self) -> Array:
        """The whole pool, assembled from the shards (a copy: for tests and
        inspection, not for kernels)."""
        parts = self._gather_all([a.pool.remote() for a in self.actors], "pool")
        return np.concatenate(parts, axis=2 if self.plan.by == "heads" else 0)

    def as_array(self, value: Any) -> Array:
        """Host arrays (a device array is copied to the host first)."""
        if hasattr(value, "copy_to_host"):
            return value.copy_to_host()
        return value if isinstance(value, np.ndarray) else np.asarray(value)

    def write(
        self, layer: int | None, keys: Array, values: Array, slot_mapping: Any
    ) -> None:
        key_parts = self.plan.split_kv(keys, layer)
        value_parts = self.plan.split_kv(values, layer)
        local = self._local_layer(layer)
        refs: list[tuple[int, Any]] = [
            (i, actor.write.remote(local, k, v, slot_mapping))
            for i, (actor, k, v) in enumerate(
                zip(self.actors, key_parts, value_parts, strict=True)
            )
            if k is not None
        ]
        self._gather(refs, "write")

    def copy_blocks(self, src: Any, dst: Any, tokens: int | None) -> None:
        self._gather_all(
            [a.copy_blocks.remote(src, dst, tokens) for a in self.actors], "copy"
        )

    def swap_out(self, block_ids: Any, tier: Array, slots: Any) -> None:
        parts = self._gather_all(
            [a.read_blocks.remote(block_ids) for a in self.actors], "swap out"
        )
        # Block-major [n, L, H, 2, B, D]: heads are axis 2, layers axis 1.
        tier[slots] = np.concatenate(parts, axis=2 if self.plan.by == "heads" else 1)

    def swap_in(self, tier: Array, slots: Any, block_ids: Any) -> None:
        data = tier[slots]
        axis = 2 if self.plan.by == "heads" else 1
        refs = [
            actor.write_blocks.remote(
                block_ids,
                np.ascontiguousarray(
                    data[(slice(None),) * axis + (self.plan.span(i),)]
                ),
            )
            for i, actor in enumerate(self.actors)
        ]
        self._gather_all(refs, "swap in")

    def gather(
        self,
        layer: int,
        table: BlockTable,
        as_float32: bool,
        out: tuple[Any, Any] | None,
    ) -> tuple[Array, Array]:
        if self.plan.by == "layers":
            shard, local = self.plan.owner(layer)
            ref = self.actors[shard].gather.remote(local, table, as_float32)
            keys, values = self._gather([(shard, ref)], "lookup")[0]
        else:
            parts = self._gather_all(
                [a.gather.remote(layer, table, as_float32) for a in self.actors],
                "lookup",
            )
            keys = self.plan.join_heads([k for k, _ in parts], axis=2)
            values = self.plan.join_heads([v for _, v in parts], axis=2)
        if out is None:
            return keys, values
        out[0][:, : keys.shape[1]] = keys
        out[0][:, keys.shape[1] :] = 0
        out[1][:, : values.shape[1]] = values
        out[1][:, values.shape[1] :] = 0
        return out

    def attention(
        self,
        layer: int,
        query: Array,
        table: BlockTable,
        options: AttentionOptions,
        out: Array | None,
        block_mass: Array | None = None,
    ) -> Array:
        want_mass = block_mass is not None
        if self.plan.by == "layers":
            shard, local = self.plan.owner(layer)
            ref = self.actors[shard].attention.remote(
                local, query, table, options, want_mass
            )
            parts = self._gather([(shard, ref)], "attention")
        else:
            options = self._whole_cache_plan(query, table, options)
            heads = query.shape[2]
            refs = [
                actor.attention.remote(
                    layer,
                    np.ascontiguousarray(query[:, :, self.plan.query_span(i, heads)]),
                    table,
                    options,
                    want_mass,
                )
                for i, actor in enumerate(self.actors)
            ]
            parts = self._gather_all(refs, "attention")
        if block_mass is not None:
            # Each shard's kv heads, in order (one shard: all of them).
            block_mass[...] = np.concatenate([p[1] for p in parts], axis=1)
            parts = [p[0] for p in parts]
        result = (
            parts[0]
            if self.plan.by == "layers"
            else self.plan.join_heads(parts, axis=2)
        )
        if out is None:
            return result
        out[...] = result
        return out

    # -- lifetime ---------------------------------------------------------------

    def check_usable(self) -> None:
        """Raise `ShardError` if a shard failed or the cache was closed."""
        if self._failure is not None:
            raise ShardError(self._failure)

    def close(self) -> None:
        """Stop the shards' actors; every later call raises `ShardError`."""
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self._failure is None:
            self._failure = "the sharded cache is closed"

    # -- calls ------------------------------------------------------------------

    def _local_layer(self, layer: int | None) -> int | None:
        if layer is None or self.plan.by == "heads":
            return layer
        return self.plan.owner(layer)[1]

    def _whole_cache_plan(
        self, query: Array, table: BlockTable, options: AttentionOptions
    ) -> AttentionOptions:
        """The context split the unsharded cache would choose (CPU kernels
        plan by the number of kv heads, which a shard has fewer of)."""
        if self.device != "cpu" or options.context_partition is not None:
            return options
        from dataclasses import replace

        from llmir.runtime.cpu.attention_kernels import (
            DEFAULT_Q_TILE,
            plan_partition_size,
        )

        tq = query.shape[1]
        q_tiles = -(-tq // min(tq, DEFAULT_Q_TILE)) if tq else 1
        plan = plan_partition_size(
            table.batch,
            self.plan.geometry.num_heads,
            q_tiles,
            table.max_len,
            self.plan.geometry.block_size,
        )
        return replace(options, context_partition=plan or 0)

    def _gather_all(
        self, refs: list[Any], what: str, timeout_s: float | None = None
    ) -> list[Any]:
        return self._gather(list(enumerate(refs)), what, timeout_s)

    def _gather(
        self, refs: list[tuple[int, Any]], what: str, timeout_s: float | None = None
    ) -> list[Any]:
        """The results of (shard, ref) pairs, in order; the first failure
        ends the cache and names its shard."""
        self.check_usable()
        ray = self._ray
        exceptions = importlib.import_module("ray.exceptions")
        limit = self.timeout_s if timeout_s is None else timeout_s
        results: list[Any] = []
        for shard, ref in refs:
            try:
                results.append(ray.get(ref, timeout=limit))
            except exceptions.GetTimeoutError:
                self._fail(
                    f"shard {shard} did not answer within {limit:g} s ({what}; "
                    "hung or overloaded)"
                )
            except exceptions.RayActorError as exc:
                self._fail(f"shard {shard} died ({what}): {_first_line(exc)}")
            except exceptions.RayTaskError as exc:
                self._fail(f"shard {shard} failed ({what}): {_first_line(exc)}")
        return results

    def _fail(self, message: str) -> None:
        self._failure = (
            f"{message}; the cache's data is incomplete: close() it and build a new one"
        )
        raise ShardError(self._failure)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
