"""
`llm-verify-kv-cache`: every cache version is used before it is superseded.

A cache value is versioned in SSA form: an op that writes it (per
`KVCacheInterface.writes_cache`, today `llm.append_kv`) consumes one version
and returns the next.  The runtime updates the cache in place, so any later
use of the consumed version would silently see the appended tokens (or, with
two writers of one version, a fork that cannot exist).  This pass rejects:

- a second op writing a version that another op already wrote;
- any use of a version after the op that wrote it, in the writer's block or
  nested in a later op of that block.

Uses in other blocks (e.g. branches) are not ordered here and are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.utils.exceptions import PassFailedException

from llmir.dialects.interfaces import KVCacheInterface


def _value_text(value: SSAValue) -> str:
    return f"%{value.name_hint}" if value.name_hint else "cache value"


def check_cache_versions(root: Operation) -> None:
    """Raises PassFailedException on the first stale or forked cache use in `root`."""
    writer_of: dict[SSAValue, Operation] = {}
    for op in root.walk():
        if not isinstance(op, KVCacheInterface) or not op.writes_cache():
            continue
        cache = op.get_cache()
        if cache in writer_of:
            raise PassFailedException(
                f"{_value_text(cache)} is written by both {writer_of[cache].name} "
                f"and {op.name}; the second write must use the first's result"
            )
        writer_of[cache] = op

    for cache, writer in writer_of.items():
        block = writer.parent_block()
        if block is None:
            continue
        for use in cache.uses:
            user = block.find_ancestor_op_in_block(use.operation)
            if user is None or user is writer:
                continue
            if writer.is_before_in_block(user):
                raise PassFailedException(
                    f"{_value_text(cache)} is used by {use.operation.name} after "
                    f"{writer.name} superseded it; use the new cache version"
                )


@dataclass(frozen=True)
class LLMVerifyKVCachePass(ModulePass):
    """Rejects uses of a KV cache version after it was written (see module doc)."""

    name = "llm-verify-kv-cache"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        check_cache_versions(op)
