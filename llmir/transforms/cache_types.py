"""Finding and rewriting a module's cache types: what the passes that change a
cache's type (`llm-select-block-size`, `llm-quantize-kv`) share."""

from __future__ import annotations

from xdsl.ir import Attribute, Operation
from xdsl.pattern_rewriter import TypeConversionPattern, attr_type_rewrite_pattern

from llmir.dialects.llm_type import PagedKVCacheType


class RetypeCache(TypeConversionPattern):
    """One cache type to another, everywhere (recursive, for the types
    nested in function types)."""

    def __init__(self, old: PagedKVCacheType, new: PagedKVCacheType) -> None:
        super().__init__(recursive=True)
        self.old = old
        self.new = new

    @attr_type_rewrite_pattern
    def convert_type(self, typ: PagedKVCacheType, /) -> Attribute | None:
        return self.new if typ == self.old else None


def cache_types(module: Operation) -> list[PagedKVCacheType]:
    """Every cache type of the module, in order of first appearance."""
    seen: list[PagedKVCacheType] = []
    for op in module.walk():
        values = [
            *op.results,
            *(a for r in op.regions for b in r.blocks for a in b.args),
        ]
        for value in values:
            if isinstance(value.type, PagedKVCacheType) and value.type not in seen:
                seen.append(value.type)
    return seen
