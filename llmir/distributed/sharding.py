"""How a cache is cut into shards, and how tensors are cut and joined along
that cut: pure numpy, no Ray.

* By kv heads (tensor parallel): shard i holds kv heads ``[i H/N, (i+1)
  H/N)`` of every layer, and answers for the query heads of those groups
  (``[i Hq/N, (i+1) Hq/N)``: a GQA group never spans two shards).
* By layers (pipeline parallel): shard i holds layers ``[i L/N, (i+1)
  L/N)`` with all their heads.

Every shard has the same number of blocks with the same ids: the driver's
one block table addresses all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from llmir.errors import ConfigError
from llmir.runtime.geometry import CacheGeometry

SHARD_BY = ("heads", "layers")

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class ShardPlan:
    """`shards` shards of the cache of `geometry`, cut `by` heads or layers."""

    by: str
    shards: int
    geometry: CacheGeometry

    def __post_init__(self) -> None:
        if self.by not in SHARD_BY:
            raise ConfigError(
                f"shard_by must be one of {', '.join(SHARD_BY)}, got {self.by!r}"
            )
        shards = cast(object, self.shards)
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ConfigError(f"shards must be a positive integer, got {shards!r}")
        total = self.total
        if total % self.shards:
            raise ConfigError(
                f"{self.shards} shards do not divide the cache's {total} "
                f"{'kv heads' if self.by == 'heads' else 'layers'}: give a divisor "
                f"of {total}"
            )

    @property
    def total(self) -> int:
        """Heads or layers of the whole cache."""
        g = self.geometry
        return g.num_heads if self.by == "heads" else g.num_layers

    @property
    def per_shard(self) -> int:
        return self.total // self.shards

    def shard_geometry(self) -> CacheGeometry:
        """The geometry every shard holds."""
        if self.by == "heads":
            return replace(self.geometry, num_heads=self.per_shard)
        return replace(self.geometry, num_layers=self.per_shard)

    def span(self, shard: int) -> slice:
        """The heads or layers of `shard`."""
        return slice(shard * self.per_shard, (shard + 1) * self.per_shard)

    def owner(self, layer: int) -> tuple[int, int]:
        """(shard, local layer) of a layer of a layer-sharded cache."""
        return divmod(layer, self.per_shard)

    def query_span(self, shard: int, query_heads: int) -> slice:
        """The query heads of `shard` (head-sharded): its kv heads' groups."""
        per = query_heads // self.shards
        return slice(shard * per, (shard + 1) * per)

    def split_kv(self, keys: Array, layer: int | None) -> list[Array | None]:
        """Per shard, its part of ``[L', N, H, D]`` keys (or values) being
        written to `layer` (None: every layer); None for a shard with
        nothing to write."""
        if self.by == "heads":
            return [
                np.ascontiguousarray(keys[:, :, self.span(i)])
                for i in range(self.shards)
            ]
        if layer is not None:
            owner, _ = self.owner(layer)
            return [keys if i == owner else None for i in range(self.shards)]
        return [np.ascontiguousarray(keys[self.span(i)]) for i in range(self.shards)]

    def join_heads(self, parts: list[Array], axis: int) -> Array:
        """Head slices of the shards, in order, as one array."""
        return np.concatenate(parts, axis=axis)
