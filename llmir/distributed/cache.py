"""`ShardedKVCache`: the `KVCache` protocol over shards in Ray actors.

A `PagedKVCache` whose backend is a `ShardedBackend`: the driver keeps the
one allocator, block tables, lengths and prefix hashes (vLLM's scheduler
does the same), checks every argument, and sends the shards only data
operations on slots it computed.  Results are bit-identical to a local
cache's (f32; the kernels are the same and are told the same plan).

    with ShardedKVCache(32, 8, 128, 16, 4096, "f16", shards=2,
                        shard_by="heads", num_blocks=1024) as cache:
        cache.append_kv(k, v, [0, 1], layer=0)
        out = paged_attention(q, cache, *cache.block_table([0, 1]))

Ray is started on this machine unless the caller connected to a cluster
(`ray.init(address=...)`) first.  Every call that would change the cache
first checks that no shard has failed and the cache is open, so a rejected
call changes nothing.
"""

from __future__ import annotations

from typing import Any

from llmir.distributed.backend import DEFAULT_TIMEOUT_S, ShardedBackend
from llmir.distributed.sharding import ShardPlan
from llmir.runtime.eviction import EvictionPolicy
from llmir.runtime.geometry import CacheGeometry
from llmir.runtime.kv_cache import PagedKVCache


class ShardedKVCache(PagedKVCache):
    """A paged KV cache cut into `shards` by kv heads or by layers."""

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        block_size: int,
        max_seq_len: int,
        dtype: object = "f32",
        *,
        shards: int = 2,
        shard_by: str = "heads",
        num_blocks: int | None = None,
        memory_budget_bytes: int | None = None,
        device: str = "cpu",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        enable_prefix_caching: bool = False,
        eviction: str | EvictionPolicy = "lru",
        swap_blocks: int = 0,
        swap_dir: str | None = None,
        window_tokens: int | None = None,
        sink_tokens: int | None = None,
        heavy_hitter_blocks: int | None = None,
        heavy_hitter_score: str = "mean",
    ) -> None:
        def factory(geometry: CacheGeometry, blocks: int) -> ShardedBackend:
            # The plan is checked before any actor starts.
            plan = ShardPlan(shard_by, shards, geometry)
            return ShardedBackend(
                plan, blocks, device, timeout_s, block_mass=bool(heavy_hitter_blocks)
            )

        super().__init__(
            num_layers,
            num_heads,
            head_dim,
            block_size,
            max_seq_len,
            dtype,
            num_blocks=num_blocks,
            memory_budget_bytes=memory_budget_bytes,
            device=device,
            enable_prefix_caching=enable_prefix_caching,
            eviction=eviction,
            swap_blocks=swap_blocks,
            swap_dir=swap_dir,
            window_tokens=window_tokens,
            sink_tokens=sink_tokens,
            heavy_hitter_blocks=heavy_hitter_blocks,
            heavy_hitter_score=heavy_hitter_score,
            backend_factory=factory,
        )
        backend = self.backend
        assert isinstance(backend, ShardedBackend)
        self._sharded = backend

    @classmethod
    def for_geometry(
        cls,
        geometry: CacheGeometry,
        num_blocks: int,
        *,
        shards: int,
        shard_by: str = "heads",
        device: str = "cpu",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        enable_prefix_caching: bool = False,
        eviction: str = "lru",
        swap_blocks: int = 0,
        swap_dir: str | None = None,
        window_tokens: int | None = None,
        sink_tokens: int | None = None,
        heavy_hitter_blocks: int | None = None,
        heavy_hitter_score: str = "mean",
    ) -> ShardedKVCache:
        return cls(
            geometry.num_layers,
            geometry.num_heads,
            geometry.head_dim,
            geometry.block_size,
            geometry.max_seq_len,
            geometry.element_type,
            shards=shards,
            shard_by=shard_by,
            num_blocks=num_blocks,
            device=device,
            timeout_s=timeout_s,
            enable_prefix_caching=enable_prefix_caching,
            eviction=eviction,
            swap_blocks=swap_blocks,
            swap_dir=swap_dir,
            window_tokens=window_tokens,
            sink_tokens=sink_tokens,
            heavy_hitter_blocks=heavy_hitter_blocks,
            heavy_hitter_score=heavy_hitter_score,
        )

    @property
    def plan(self) -> ShardPlan:
        return self._sharded.plan

    @property
    def actors(self) -> list[Any]:
        """The shards' Ray actor handles, in order."""
        return self._sharded.actors

    def close(self) -> None:
        """Stop the shards (and delete the swap file); any later call
        raises `ShardError`."""
        super().close()
        self._sharded.close()

    def __enter__(self) -> ShardedKVCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Calls that change the cache check the shards first: a closed or
    # failed cache rejects them before the bookkeeping moves.

    def append_kv(self, *args: Any, **kwargs: Any) -> Any:
        self._sharded.check_usable()
        return super().append_kv(*args, **kwargs)

    def append_kv_all_layers(self, *args: Any, **kwargs: Any) -> Any:
        self._sharded.check_usable()
        return super().append_kv_all_layers(*args, **kwargs)

    def reserve_slots(self, *args: Any, **kwargs: Any) -> Any:
        self._sharded.check_usable()
        return super().reserve_slots(*args, **kwargs)

    def write_kv(self, *args: Any, **kwargs: Any) -> None:
        self._sharded.check_usable()
        super().write_kv(*args, **kwargs)

    def fork_sequences(self, *args: Any, **kwargs: Any) -> None:
        self._sharded.check_usable()
        super().fork_sequences(*args, **kwargs)

    def match_prefixes(self, *args: Any, **kwargs: Any) -> Any:
        self._sharded.check_usable()
        return super().match_prefixes(*args, **kwargs)

    def free_sequences(self, *args: Any, **kwargs: Any) -> None:
        self._sharded.check_usable()
        super().free_sequences(*args, **kwargs)

    def swap_out(self, seq_ids: Any) -> int:
        self._sharded.check_usable()
        return super().swap_out(seq_ids)

    def swap_in(self, seq_ids: Any) -> int:
        self._sharded.check_usable()
        return super().swap_in(seq_ids)

    def reset(self) -> None:
        self._sharded.check_usable()
        super().reset()

    def __repr__(self) -> str:
        return (
            f"ShardedKVCache({self.geometry.describe()}, {self.num_blocks} blocks, "
            f"{self.plan.shards} shards by {self.plan.by}, device={self.device!r})"
        )
