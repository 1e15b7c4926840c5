"""`CacheOptions`: how a cache behaves beyond its geometry, as the IR's
`llm.create_kv_cache` and the Python constructor both state it.

The geometry (`CacheGeometry`) says what a block holds; these options say
what the cache does with blocks: whether full blocks are indexed for prefix
reuse, which cached block goes first when the pool runs out, how many blocks
a swap tier holds, and which tokens a sequence keeps (sinks + window, and
heavy hitters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from llmir.errors import ConfigError
from llmir.runtime.eviction import POLICIES, EvictionPolicy

HEAVY_HITTER_SCORES = ("mean", "sum")
"""The heavy-hitter scores, in their ABI order."""


@dataclass(frozen=True)
class CacheOptions:
    """Behaviour switches of one cache, checked on construction."""

    prefix_caching: bool = False
    """Index full blocks by their chained token hash, so that sequences with
    the same prompt start reuse them (`PagedKVCache.match_prefix`)."""
    eviction: str | EvictionPolicy = "lru"
    """The policy ordering cached-free blocks for reuse: a key of
    `llmir.runtime.eviction.POLICIES`, or a policy object of one's own (an
    empty `EvictionPolicy`, used by this one cache)."""
    swap_blocks: int = 0
    """Block slots of the swap tier (`llmir.runtime.swap`); 0: none."""
    window_tokens: int | None = None
    """Token pruning (StreamingLLM): keep each sequence's last
    `window_tokens` tokens (and its first `sink_tokens`), giving back every
    block that lies wholly outside both.  Attention over a pruned sequence
    must use a mask that never reads there: ``sliding_window <=
    window_tokens`` and ``sink_tokens <=`` the cache's.  None: no pruning."""
    sink_tokens: int | None = None
    """The attention sinks kept beside the window (needs `window_tokens`)."""
    heavy_hitter_blocks: int | None = None
    """Heavy-hitter pruning (H2O, by blocks): instead of cutting everything
    behind the window, keep each sequence within this many blocks by giving
    back, when it grows past them, the blocks outside the sinks and the
    window that attention gave the least mass so far.  Needs
    `window_tokens` (the recent tokens always kept)."""
    heavy_hitter_score: str = "mean"
    """What weighs a block for heavy-hitter pruning: "mean", its attention
    mass per query row that could see it (blocks are not favoured for their
    age), or "sum", its accumulated mass (H2O's score, which keeps the
    oldest blocks: the prompt's were seen by every later query)."""

    def __post_init__(self) -> None:
        prefix_caching = cast(object, self.prefix_caching)
        if not isinstance(prefix_caching, bool):
            raise ConfigError(
                f"prefix_caching must be a bool, got {self.prefix_caching!r}"
            )
        swap = cast(object, self.swap_blocks)
        if isinstance(swap, bool) or not isinstance(swap, int) or swap < 0:
            raise ConfigError(
                f"swap_blocks must be a non-negative integer, got {swap!r}"
            )
        for name in ("window_tokens", "sink_tokens", "heavy_hitter_blocks"):
            count = cast(object, getattr(self, name))
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 1
            ):
                raise ConfigError(
                    f"{name} must be a positive integer or None, got {count!r}"
                )
        for name in ("sink_tokens", "heavy_hitter_blocks"):
            if getattr(self, name) is not None and self.window_tokens is None:
                raise ConfigError(
                    f"{name}={getattr(self, name)} needs window_tokens: without a "
                    "window nothing is pruned"
                )
        if self.heavy_hitter_score not in HEAVY_HITTER_SCORES:
            raise ConfigError(
                f"heavy_hitter_score must be one of "
                f"{', '.join(HEAVY_HITTER_SCORES)}, got {self.heavy_hitter_score!r}"
            )
        policy = cast(object, self.eviction)
        if isinstance(policy, str):
            if policy not in POLICIES:
                raise ConfigError(
                    f"unknown eviction policy {policy!r}, expected one of "
                    f"{', '.join(POLICIES)} or an EvictionPolicy object"
                )
        elif not isinstance(policy, EvictionPolicy) or len(policy):
            raise ConfigError(
                f"eviction must be a policy name or an empty EvictionPolicy, got "
                f"{policy!r}"
            )

    @property
    def eviction_name(self) -> str:
        policy = self.eviction
        return policy if isinstance(policy, str) else policy.name

    def eviction_policy(self) -> EvictionPolicy:
        """The policy object: a fresh one for a name."""
        policy = self.eviction
        return POLICIES[policy]() if isinstance(policy, str) else policy
