"""Which cached block to give up when the pool needs a free one.

With prefix caching on, a block whose last holder freed it keeps its content
hash and stays matchable ("cached-free") until the allocator needs it for
something else.  An `EvictionPolicy` orders those blocks: the allocator hands
it each block that becomes cached-free and takes its victims from it, first
to last.

* `LRUEviction` (the default): least recently freed first; blocks freed
  together go tail first (the end of a sequence is the least likely to be
  shared again), as vLLM's free block queue does.
* `PriorityEviction`: the lowest retention priority first (a priority the
  caller gives each sequence, as TensorRT-LLM's KV cache manager does),
  least recently freed first among equals.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol, runtime_checkable


@runtime_checkable
class EvictionPolicy(Protocol):
    """An ordered set of cached-free block ids."""

    name: str

    def push(self, blocks: Iterable[int], priority: int = 0) -> None:
        """Add blocks that just became cached-free, in the order they should
        be evicted among themselves (first evicted first)."""
        ...

    def remove(self, block: int) -> None:
        """A cached-free block was matched again: it is no longer evictable."""
        ...

    def pop(self, count: int) -> list[int]:
        """Take `count` victims (at most as many as there are)."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, block: object) -> bool: ...

    def clear(self) -> None: ...


class LRUEviction:
    """Least recently freed first."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[int, None] = OrderedDict()

    def push(self, blocks: Iterable[int], priority: int = 0) -> None:
        for block in blocks:
            self._order[block] = None

    def remove(self, block: int) -> None:
        del self._order[block]

    def pop(self, count: int) -> list[int]:
        victims: list[int] = []
        while self._order and len(victims) < count:
            victims.append(self._order.popitem(last=False)[0])
        return victims

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, block: object) -> bool:
        return block in self._order

    def clear(self) -> None:
        self._order.clear()


class PriorityEviction:
    """The lowest priority first; least recently freed first within one
    priority."""

    name = "priority"

    def __init__(self) -> None:
        self._levels: dict[int, OrderedDict[int, None]] = {}
        self._level_of: dict[int, int] = {}

    def push(self, blocks: Iterable[int], priority: int = 0) -> None:
        level = self._levels.setdefault(priority, OrderedDict())
        for block in blocks:
            level[block] = None
            self._level_of[block] = priority

    def priority_of(self, block: int) -> int:
        """The retention priority a cached-free block was pushed with."""
        return self._level_of[block]

    def remove(self, block: int) -> None:
        priority = self._level_of.pop(block)
        level = self._levels[priority]
        del level[block]
        if not level:  # many distinct priorities (timestamps) must not pile up
            del self._levels[priority]

    def pop(self, count: int) -> list[int]:
        victims: list[int] = []
        for priority in sorted(self._levels):
            level = self._levels[priority]
            while level and len(victims) < count:
                block = level.popitem(last=False)[0]
                del self._level_of[block]
                victims.append(block)
            if not level:
                del self._levels[priority]
            if len(victims) == count:
                break
        return victims

    def __len__(self) -> int:
        return len(self._level_of)

    def __contains__(self, block: object) -> bool:
        return block in self._level_of

    def clear(self) -> None:
        self._levels.clear()
        self._level_of.clear()


POLICIES: dict[str, type[LRUEviction] | type[PriorityEviction]] = {
    "lru": LRUEviction,
    "priority": PriorityEviction,
}
