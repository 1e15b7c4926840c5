"""
`llm-plan-kv-memory{budget=8GiB}`: size every cache's pool from a byte budget.

Sets `num_blocks` on each `llm.create_kv_cache` of the module to the most
blocks the budget pays for, counted as the runtime counts them
(`llmir.runtime.memory`: each block's K/V bytes, from the cache type's
geometry and element type, plus the allocator's bookkeeping), and records
what the budget buys in the op's `llm.kv_plan` attribute: blocks, token
slots, sequences of `max_seq_len` that fit at once, pool and bookkeeping
bytes.  `llm-kv-cache-stats` reports the same figures.

Several caches in one module share the budget in proportion to their bytes
per token slot, so that each holds about the same number of tokens (the
caches of one model, or a draft and a target model, serve the same
sequences).  A cache whose share cannot hold one sequence of `max_seq_len`
tokens fails the pass with the bytes it would need.

The budget is a byte count with an optional unit: ``budget=8GiB``,
``budget=512MiB``, ``budget=16GB``, ``budget=1000000``, or quoted with a
fraction (``budget="1.5GiB"``).  Running the pass again with the same budget
changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin
from xdsl.dialects.builtin import DictionaryAttr, IntegerAttr, i64
from xdsl.passes import ModulePass
from xdsl.utils.exceptions import PassFailedException

from llmir.dialects.llm import CreateKVCacheOp
from llmir.errors import ConfigError
from llmir.runtime.memory import (
    MemoryPlan,
    format_bytes,
    parse_bytes,
    plan_blocks,
    planned_block_bytes,
    split_budget,
)

PLAN_ATTR_NAME = "llm.kv_plan"


def plan_attribute(plan: MemoryPlan) -> DictionaryAttr:
    """A plan as the `llm.kv_plan` dictionary (i64 entries)."""
    return DictionaryAttr(
        {
            "blocks": IntegerAttr(plan.blocks, i64),
            "tokens": IntegerAttr(plan.tokens, i64),
            "max_len_sequences": IntegerAttr(plan.max_len_sequences, i64),
            "pool_bytes": IntegerAttr(plan.pool_bytes, i64),
            "bookkeeping_bytes": IntegerAttr(plan.bookkeeping_bytes, i64),
        }
    )


@dataclass(frozen=True)
class PlanKVMemoryPass(ModulePass):
    """Sets `num_blocks` of every cache from a byte budget (module
    docstring)."""

    name = "llm-plan-kv-memory"

    budget: str | int = "0"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        try:
            budget = parse_bytes(str(self.budget))
        except ConfigError as e:
            raise PassFailedException(f"{self.name}: {e}") from e
        creates = [c for c in op.walk() if isinstance(c, CreateKVCacheOp)]
        if not creates:
            return
        geometries = [c.cache.type.geometry for c in creates]  # pyright: ignore[reportAttributeAccessIssue]
        shares = split_budget(geometries, budget)
        for create, geometry, blocks in zip(creates, geometries, shares, strict=True):
            need = geometry.max_blocks_per_seq
            if blocks < need:
                one_sequence = need * planned_block_bytes(geometry)
                whole = sum(
                    g.max_blocks_per_seq * planned_block_bytes(g) for g in geometries
                )
                raise PassFailedException(
                    f"{self.name}: a budget of {format_bytes(budget)} ({budget} bytes) "
                    f"cannot hold one sequence of {geometry.max_seq_len} tokens in "
                    f"{create.cache.type}: that needs {one_sequence} bytes "
                    f"({need} blocks of {planned_block_bytes(geometry)} bytes); the "
                    f"module's {len(creates)} cache(s) need {whole} bytes"
                )
            create.num_blocks_attr = IntegerAttr(blocks, i64)
            create.attributes[PLAN_ATTR_NAME] = plan_attribute(
                plan_blocks(geometry, blocks)
            )
