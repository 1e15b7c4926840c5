"""
`llm-select-block-size`: choose each cache's block size from measured costs
and an expected workload, and rewrite the cache type everywhere.

    xdsl-opt prog.mlir -p 'llm-select-block-size{lengths=120,300,2048}'
    xdsl-opt prog.mlir -p 'llm-select-block-size{mean=400 max=8192}'

The workload is a sample of sequence lengths (`lengths`), or a mean and a
maximum (`mean`, `max`: an exponential distribution of that mean, capped,
as chat traffic is).  For every cache type of the module, the pass models
one decode step over those lengths at each measured block size that divides
the type's `max_seq_len` (`llmir.transforms.block_size_model`, from the
measured table `llmir/data/block_costs.json`, or `costs=PATH`), weighs in
the memory the last, partly filled blocks waste (`waste_weight`, default
0.5: a step whose slots are 10% empty counts 5% slower), and picks the
cheapest.  The query heads come from the attention ops on that cache.

The new block size replaces the old one in the type wherever it appears
(ops, function signatures, loop values), in the redundant `block_size`
attributes of `llm.append_kv`, and in the static widths of block tables
(``ceil(width * old / new)``, the same token capacity), so the module keeps
verifying.  A static block table that leaves the `llm` ops (returned, say)
cannot be resized safely: the pass fails and names it.  Each
`llm.create_kv_cache` records the choice in `llm.block_size_model`
(candidates and modelled step times, us).  Running the pass again with the
same workload changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    ArrayAttr,
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    TensorType,
    f64,
    i32,
    i64,
)
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriteWalker,
)
from xdsl.rewriter import Rewriter
from xdsl.utils.exceptions import PassFailedException

from llmir.dialects.interfaces import AttentionInterface, KVCacheInterface
from llmir.dialects.llm import AppendKVOp, BlockTableOp, CreateKVCacheOp, ReserveSlotsOp
from llmir.dialects.llm_type import PagedKVCacheType
from llmir.transforms.block_size_model import (
    Choice,
    choose_block_size,
    exponential_lengths,
    load_costs,
)
from llmir.transforms.cache_types import RetypeCache, cache_types

MODEL_ATTR_NAME = "llm.block_size_model"


def _query_heads(module: Operation, cache: PagedKVCacheType) -> int:
    heads = [
        op.get_num_query_heads()
        for op in module.walk()
        if isinstance(op, AttentionInterface)
        and isinstance(op, KVCacheInterface)
        and op.get_cache_type() == cache
    ]
    return max(heads, default=cache.num_heads)


def _model_attribute(choice: Choice) -> DictionaryAttr:
    sizes = sorted(choice.predicted_us)
    return DictionaryAttr(
        {
            "block_size": IntegerAttr(choice.block_size, i64),
            "candidates": ArrayAttr([IntegerAttr(b, i64) for b in sizes]),
            "step_us": ArrayAttr(
                [FloatAttr(round(choice.predicted_us[b], 3), f64) for b in sizes]
            ),
        }
    )


def _resize_tables(module: Operation, cache: PagedKVCacheType, new_block: int) -> None:
    """Static block-table widths for the new block size (same capacity in
    tokens); the tables must stay within the `llm` ops."""
    for op in list(module.walk()):
        if not isinstance(op, BlockTableOp | ReserveSlotsOp):
            continue
        if op.get_cache_type() != cache:
            continue
        table: SSAValue = op.block_table
        table_type = table.type
        assert isinstance(table_type, TensorType)
        batch, width = table_type.get_shape()
        if width == DYNAMIC_INDEX:
            continue
        for use in table.uses:
            if not isinstance(use.operation, KVCacheInterface):
                raise PassFailedException(
                    f"llm-select-block-size: the block table {table_type} of "
                    f"{op.name} flows into {use.operation.name}, whose type would "
                    "change with the block size; give the table a dynamic width"
                )
        new_width = -(-width * cache.block_size // new_block)
        Rewriter.replace_value_with_new_type(table, TensorType(i32, [batch, new_width]))


@dataclass(frozen=True)
class SelectBlockSizePass(ModulePass):
    """Chooses each cache's block size from measured costs (module
    docstring)."""

    name = "llm-select-block-size"

    lengths: tuple[int, ...] = ()
    mean: int = 0
    max: int = 0
    waste_weight: float = 0.5
    costs: str = ""

    def _workload(self) -> list[int]:
        if self.lengths:
            if min(self.lengths) < 1:
                raise PassFailedException(
                    f"{self.name}: lengths must be positive, got {list(self.lengths)}"
                )
            return list(self.lengths)
        if self.mean > 0 and self.max >= self.mean:
            return exponential_lengths(self.mean, self.max)
        raise PassFailedException(
            f"{self.name}: give the expected lengths (lengths=120,300,2048) or a "
            f"mean and a max (mean=400 max=8192), got mean={self.mean} max={self.max}"
        )

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        lengths = self._workload()
        if self.waste_weight < 0:
            raise PassFailedException(
                f"{self.name}: waste_weight must be >= 0, got {self.waste_weight}"
            )
        try:
            costs = load_costs(self.costs or None)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PassFailedException(
                f"{self.name}: cannot read the cost table {self.costs!r}: {e}"
            ) from e
        for cache in cache_types(op):
            capped = [min(n, cache.max_seq_len) for n in lengths]
            try:
                choice = choose_block_size(
                    costs,
                    cache.cache_element_type.name,
                    _query_heads(op, cache),
                    cache.num_heads,
                    cache.head_dim,
                    capped,
                    max_seq_len=cache.max_seq_len,
                    waste_weight=self.waste_weight,
                )
            except ValueError as e:
                raise PassFailedException(f"{self.name}: {cache}: {e}") from e
            new = PagedKVCacheType(
                cache.element_type,
                cache.num_layers,
                cache.num_heads,
                cache.head_dim,
                choice.block_size,
                cache.max_seq_len,
            )
            for create in op.walk():
                if isinstance(create, CreateKVCacheOp) and create.cache.type == cache:
                    create.attributes[MODEL_ATTR_NAME] = _model_attribute(choice)
            if new == cache:
                continue
            _resize_tables(op, cache, choice.block_size)
            for append in op.walk():
                if (
                    isinstance(append, AppendKVOp)
                    and append.cache.type == cache
                    and append.block_size_attr is not None
                ):
                    append.block_size_attr = IntegerAttr(choice.block_size, i32)
            PatternRewriteWalker(RetypeCache(cache, new)).rewrite_module(op)
