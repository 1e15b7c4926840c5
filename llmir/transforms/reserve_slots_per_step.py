"""
`llm-reserve-slots-per-step`: a step's per-layer appends become one slot
reservation and per-layer writes.

A model appends each layer's keys and values in turn (layer l+1's depend on
layer l's attention), so a decode step is L `llm.append_kv` ops, each doing
the step's bookkeeping again: find the rows, check lengths, allocate,
compute the slot mapping.  Done once per step instead (vLLM's slot mapping),
the bookkeeping of a 32-layer step at batch 256 drops from 32 plans to one
(`benchmarks/bench_passes.py` measures it).  The pass rewrites

    %c1, %i1 = llm.append_kv %c0, %k0, %v0, %ids {layer = 0}
    %t, %l = llm.block_table %c1, %ids
    ...
    %c2, %i2 = llm.append_kv %c1, %k1, %v1, %ids {layer = 1}

into

    %r, %slots, %t, %l = llm.reserve_slots %c0, %ids {num_tokens = T}
    %c1 = llm.write_kv %r, %k0, %v0, %slots {layer = 0}
    ...
    %c2 = llm.write_kv %c1, %k1, %v1, %slots {layer = 1}

and gives the step's `llm.block_table` reads of those sequences the
reservation's table and lengths.

It rewrites only what is provably one step: a chain of appends in one block,
each on the cache version the previous one wrote (and that no other op
writes), with the same sequence-id value, the same static token count, no
token ids, unused block-index results, and layers 0..L-1 each exactly once.
Anything else (a partial step, different ids or token counts, dynamic token
counts, an append inside other control flow than its step's) is left as it
is.  The reservation gives layer l the positions an append to layer l would
write, and its table is the one every layer's attention reads when the
step begins with the layers level, so the program's results do not change.
Whether they are level is known only at run time: ``llm.reserve_slots``
refuses a sequence with a step half-appended (a `SequenceError`, exit 2 in
`llmir-run`) rather than hand out a table one layer would not have read.
The pass is idempotent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin
from xdsl.dialects.builtin import DYNAMIC_INDEX, TensorType
from xdsl.ir import Block, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from llmir.dialects.interfaces import KVCacheInterface
from llmir.dialects.llm import (
    AppendKVOp,
    BlockTableOp,
    ReserveSlotsOp,
    WriteKVOp,
)


def _token_count(append: AppendKVOp) -> int | None:
    keys = append.keys.type
    assert isinstance(keys, TensorType)
    tokens = keys.get_shape()[1]
    return None if tokens == DYNAMIC_INDEX else tokens


def _rewritable(append: AppendKVOp) -> bool:
    """An append the pass may turn into a write: no token ids (reserved
    positions are not indexed for prefix caching), its block indices unused,
    a static token count."""
    return (
        append.token_ids is None
        and not append.block_indices.uses
        and _token_count(append) is not None
    )


def _next_append(version: SSAValue, first: AppendKVOp) -> AppendKVOp | None:
    """The append that continues the step on `version`: the only op writing
    it, in the same block, for the same ids and token count."""
    writers = [
        use.operation
        for use in version.uses
        if isinstance(use.operation, KVCacheInterface) and use.operation.writes_cache()
    ]
    if len(writers) != 1 or not isinstance(writers[0], AppendKVOp):
        return None
    append = writers[0]
    if (
        append.parent_block() is not first.parent_block()
        or append.seq_ids is not first.seq_ids
        or _token_count(append) != _token_count(first)
        or not _rewritable(append)
    ):
        return None
    return append


def _steps(block: Block) -> Iterator[list[AppendKVOp]]:
    """The provable steps of `block`, in order (each append in one at most)."""
    taken: set[AppendKVOp] = set()
    for op in list(block.ops):
        if not isinstance(op, AppendKVOp) or op in taken or not _rewritable(op):
            continue
        num_layers = op.get_cache_type().num_layers
        chain = [op]
        layers = {op.layer}
        while len(chain) < num_layers:
            following = _next_append(chain[-1].new_cache, op)
            if following is None or following.layer in layers:
                break
            chain.append(following)
            layers.add(following.layer)
        if len(chain) == num_layers:
            taken.update(chain)
            yield chain


def _table_reads(chain: list[AppendKVOp]) -> list[BlockTableOp]:
    """`llm.block_table` ops reading the step's sequences from a version the
    step wrote: they see the reserved table."""
    reads: list[BlockTableOp] = []
    for append in chain:
        for use in append.new_cache.uses:
            read = use.operation
            if isinstance(read, BlockTableOp) and read.seq_ids is chain[0].seq_ids:
                reads.append(read)
    return reads


def _rewrite(chain: list[AppendKVOp]) -> None:
    first = chain[0]
    reads = _table_reads(chain)
    table_type = reads[0].block_table.type if reads else None
    tokens = _token_count(first)
    assert tokens is not None
    reserve = ReserveSlotsOp(first.cache, first.seq_ids, tokens, table_type)
    reserve.new_cache.name_hint = "reserved"
    reserve.slots.name_hint = "slots"
    if reads:
        reserve.block_table.name_hint = reads[0].block_table.name_hint
        reserve.seq_lens.name_hint = reads[0].seq_lens.name_hint
    Rewriter.insert_op(reserve, InsertPoint.before(first))
    cache = reserve.new_cache
    for append in chain:
        write = WriteKVOp(
            cache, append.keys, append.values, reserve.slots, layer=append.layer
        )
        Rewriter.insert_op(write, InsertPoint.before(append))
        write.new_cache.name_hint = append.new_cache.name_hint
        append.new_cache.replace_all_uses_with(write.new_cache)
        Rewriter.erase_op(append)
        cache = write.new_cache
    for read in reads:
        if (
            read.block_table.type == reserve.block_table.type
            and read.seq_lens.type == reserve.seq_lens.type
        ):
            read.block_table.replace_all_uses_with(reserve.block_table)
            read.seq_lens.replace_all_uses_with(reserve.seq_lens)
            Rewriter.erase_op(read)


def _blocks(root: Operation) -> Iterator[Block]:
    for op in root.walk():
        for region in op.regions:
            yield from region.blocks


@dataclass(frozen=True)
class ReserveSlotsPerStepPass(ModulePass):
    """Rewrites each provable step of per-layer appends into one
    `llm.reserve_slots` and per-layer `llm.write_kv` ops (module docstring)."""

    name = "llm-reserve-slots-per-step"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        for block in list(_blocks(op)):
            for chain in list(_steps(block)):
                _rewrite(chain)
