"""The contract between the `llm` IR and the llmir runtime: which function
each op becomes, in what order its operands travel, how its attributes ride
along, and what it returns.

Read by ``convert-llm-to-func`` (to emit calls and declarations) and by the
interpreter (to execute both the ops and the calls, through the same
implementations in `llmir.interpreters.runtime_calls`); nothing else encodes
any of it.  ``docs/abi.md`` is the contract in prose.

The rules:

* The cache is an opaque handle after lowering, ``!llvm.ptr``: the runtime
  cache is one mutable object, so an op's *new* cache version is the handle
  it was given (`KVCacheInterface.get_updated_cache` is replaced by
  `get_cache`) and calls return no cache.
* Operands travel in the op's operand order: the cache as the handle,
  tensors with every dimension dynamic (``tensor<?x?x?x?xf16>``), so one
  declaration serves every shape; then the op's attributes, each an
  ``arith.constant`` of the scalar type given below, in the order listed.
* Results are the op's non-cache results, with dynamic shapes (the lowering
  casts them back to the static types the program uses).  A static result
  dimension the runtime must honour travels as an i64 operand (-1 for a
  dynamic one): the width of a block table, the length of a lookup.
* Absent optional attributes are encoded as 0 (``sliding_window``,
  ``logits_soft_cap``: both are positive when present) or, where every
  value is valid (``priority``), as -2^63; the default scale as its value
  1/sqrt(head_dim) rounded to f32.
* An absent optional tensor operand (``token_ids`` of ``append_kv``) is
  passed as an empty tensor (``tensor<0x0xi32>``, cast to dynamic): the
  runtime reads an empty tensor as "not given".
* A callee whose tensors carry the data's element type is named per
  element type of the registry (`llmir.runtime.dtypes`):
  ``llmir_<op>_<element>``; the others are ``llmir_<op>``.

Per op (E: an element type of the registry; scalars i64 unless noted):

    create_kv_cache   llmir_create_kv_cache_E   (E of the cache)
        scalars: num_layers, num_heads, head_dim, block_size, max_seq_len,
                 num_blocks, prefix_caching : i1,
                 eviction (index in llmir.runtime.eviction.POLICIES),
                 swap_blocks, window_tokens (0: no pruning),
                 sink_tokens (0: none), heavy_hitter_blocks (0: none),
                 heavy_hitter_score (index in
                 llmir.runtime.options.HEAVY_HITTER_SCORES)
        returns: the handle
    append_kv         llmir_append_kv_E          (E of the keys)
        operands: cache, keys, values, seq_ids, token_ids (empty: none)
        scalars: layer : i32
        returns: block indices tensor<?x?xi32>
    block_table       llmir_block_table
        scalars: width (-1: dynamic)
        returns: table tensor<?x?xi32>, lengths tensor<?xi32>
    lookup_kv         llmir_lookup_kv_E          (E of the results)
        scalars: layer : i32, max_len (-1: dynamic)
        returns: keys, values tensor<?x?x?x?xE>
    paged_attention   llmir_paged_attention_E    (E of the query)
        scalars: layer : i32, scale : f32, causal : i1,
                 sliding_window : i32 (0: off), logits_soft_cap : f32 (0: off),
                 sink_tokens : i32 (0: none)
        returns: output tensor<?x?x?x?xE>
    free_sequence     llmir_free_sequence
        scalars: priority (-2^63: each sequence's own)
        returns: nothing
    fork_sequence     llmir_fork_sequence
        operands: cache, parents, children
        returns: nothing
    match_prefix      llmir_match_prefix
        operands: cache, seq_ids, token_ids
        returns: cached lengths tensor<?xi32>
    reserve_slots     llmir_reserve_slots
        scalars: num_tokens, width (-1: dynamic)
        returns: slots tensor<?x?x?xi32>, table tensor<?x?xi32>,
                 lengths tensor<?xi32>
    swap_out          llmir_swap_out             (cache, seq_ids)
    swap_in           llmir_swap_in              (cache, seq_ids)
    write_kv          llmir_write_kv_E           (E of the keys)
        operands: cache, keys, values, slots
        scalars: layer : i32
        returns: nothing
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    TensorType,
    f32,
    i1,
    i32,
    i64,
)
from xdsl.dialects.llvm import LLVMPointerType
from xdsl.ir import Attribute, Operation, SSAValue

from llmir.dialects import llm
from llmir.dialects.interfaces import AttentionInterface, KVCacheInterface
from llmir.dialects.llm_type import PagedKVCacheType
from llmir.runtime.dtypes import (
    ELEMENT_TYPES,
    ElementType,
    element_type_of_ir,
    supported_names,
)
from llmir.runtime.eviction import POLICIES
from llmir.runtime.options import HEAVY_HITTER_SCORES

ABI_VERSION = 5
"""2: sharing (fork_sequence, match_prefix, append_kv token_ids, the
create_kv_cache prefix_caching/eviction and free_sequence priority
scalars).  3: reserve_slots and write_kv.  4: swap_out, swap_in and the
create_kv_cache swap_blocks scalar.  5: pruning, the create_kv_cache
window_tokens/sink_tokens/heavy_hitter_blocks/heavy_hitter_score and
paged_attention
sink_tokens scalars."""

NO_PRIORITY = -(2**63)
"""The encoded absent ``priority`` of ``free_sequence``."""

EVICTION_POLICIES = tuple(POLICIES)
"""The eviction policies by their ABI code (index)."""

PREFIX = "llmir_"
"""Every runtime function's name starts with this."""

HANDLE = LLVMPointerType()
"""The type of a cache after lowering: an opaque pointer to the runtime's
cache object."""

Number = int | float | bool


@dataclass(frozen=True)
class Scalar:
    """An attribute of the op, passed as a trailing scalar operand."""

    name: str
    type: Attribute
    read: Callable[[Any], Number]
    """The encoded value, read from the op (through its interfaces)."""
    absent: Number | None = None
    """The encoded value that decodes to None ("off", "dynamic")."""

    def decode(self, value: Number) -> Number | None:
        """The Python value the runtime takes for an encoded `value`."""
        if self.absent is not None and value == self.absent:
            return None
        if self.type == f32:
            # Both forms of a program must pass the runtime the same float.
            return float(np.float32(value))
        if self.type == i1:
            return bool(value)
        return int(value)

    def attribute(self, value: Number) -> IntegerAttr | FloatAttr:
        """`value` as the attribute of an ``arith.constant``."""
        if isinstance(self.type, IntegerType):
            return IntegerAttr(int(value), self.type)
        return FloatAttr(float(value), f32)


@dataclass(frozen=True)
class Tensor:
    """A tensor operand or result: its rank and element type (None: the
    data's element type, which names the callee)."""

    rank: int
    element: Attribute | None = None
    optional: str | None = None
    """For an optional operand, its name on the op (absent: None there)."""

    def type(self, data: ElementType | None) -> TensorType[Attribute]:
        element = self.element
        if element is None:
            assert data is not None, "a data tensor needs the data element type"
            element = data.ir_type
        return TensorType(element, [DYNAMIC_INDEX] * self.rank)


CACHE = "cache"
"""An operand or result that is the cache (the handle after lowering)."""

Slot = Tensor | str


@dataclass(frozen=True)
class RuntimeFunction:
    """One op's runtime entry point."""

    op: type[Operation]
    base: str
    """The callee's name (without the element-type suffix) and the name of
    its implementation in `llmir.interpreters.runtime_calls`."""
    operands: tuple[Slot, ...]
    """The op's operands, in order."""
    scalars: tuple[Scalar, ...]
    results: tuple[Slot, ...]
    """The op's results, in order (cache results are not returned)."""
    data: Callable[[Any], Attribute] | None = None
    """The element type naming the callee, read from the op; None for an
    untyped callee."""

    def callee(self, element: ElementType | None) -> str:
        name = PREFIX + self.base
        return name if element is None else f"{name}_{element.name}"

    def callees(self) -> Iterator[tuple[str, ElementType | None]]:
        """Every callee name of this function, with its element type."""
        if self.data is None:
            yield self.callee(None), None
        else:
            for element in ELEMENT_TYPES.values():
                yield self.callee(element), element

    def operand_values(self, op: Operation) -> list[SSAValue | None]:
        """The op's operands aligned with `operands`: None where an optional
        operand is absent."""
        given = iter(op.operands)
        values: list[SSAValue | None] = []
        for slot in self.operands:
            optional = slot.optional if isinstance(slot, Tensor) else None
            if optional is not None and getattr(op, optional) is None:
                values.append(None)
                continue
            values.append(next(given))
        return values

    def element_of(self, op: Operation) -> ElementType | None:
        if self.data is None:
            return None
        data = self.data(op)
        element = element_type_of_ir(data)
        if element is None:
            raise ValueError(
                f"{op.name}: element type {data} is not in the element-type registry "
                f"(llmir.runtime.dtypes: {supported_names()})"
            )
        return element

    def signature(
        self, element: ElementType | None
    ) -> tuple[list[Attribute], list[Attribute]]:
        """The declaration's (input types, result types)."""
        inputs = [_slot_type(slot, element) for slot in self.operands]
        inputs += [scalar.type for scalar in self.scalars]
        results = [_slot_type(slot, element) for slot in self.returned_results]
        return inputs, results

    @property
    def returned_results(self) -> tuple[Slot, ...]:
        """What the call returns: the results but the cache, except that
        creating a cache returns its handle."""
        if self.op is llm.CreateKVCacheOp:
            return self.results
        return tuple(slot for slot in self.results if slot != CACHE)

    def encode(self, op: Operation) -> tuple[Number, ...]:
        """The op's trailing scalar operands."""
        return tuple(scalar.read(op) for scalar in self.scalars)

    def decode(self, values: Sequence[Any]) -> tuple[Number | None, ...]:
        """Encoded scalar operands (Python numbers) as the runtime takes them."""
        return tuple(
            scalar.decode(value)
            for scalar, value in zip(self.scalars, values, strict=True)
        )


def _slot_type(slot: Slot, element: ElementType | None) -> Attribute:
    return HANDLE if slot == CACHE else slot.type(element)  # pyright: ignore[reportAttributeAccessIssue]


def _static_dim(value: Any, result: int, axis: int) -> int:
    """Dimension `axis` of result `result` of an op, -1 if dynamic."""
    tensor = value.results[result].type
    assert isinstance(tensor, TensorType)
    dim = tensor.get_shape()[axis]
    return -1 if dim == DYNAMIC_INDEX else dim


def _layer(op: Any) -> int:
    layer = op.get_layer() if isinstance(op, KVCacheInterface) else None
    assert layer is not None
    return layer


def _cache_dim(name: str) -> Callable[[Any], int]:
    def read(op: Any) -> int:
        assert isinstance(op, KVCacheInterface)
        return getattr(op.get_cache_type(), name)

    return read


def _attention(op: Any) -> AttentionInterface:
    assert isinstance(op, AttentionInterface)
    return op


def _element_of_operand(index: int) -> Callable[[Any], Attribute]:
    def read(op: Any) -> Attribute:
        return op.operands[index].type.element_type

    return read


LAYER = Scalar("layer", i32, _layer)

FUNCTIONS: tuple[RuntimeFunction, ...] = (
    RuntimeFunction(
        llm.CreateKVCacheOp,
        "create_kv_cache",
        (),
        (
            Scalar("num_layers", i64, _cache_dim("num_layers")),
            Scalar("num_heads", i64, _cache_dim("num_heads")),
            Scalar("head_dim", i64, _cache_dim("head_dim")),
            Scalar("block_size", i64, _cache_dim("block_size")),
            Scalar("max_seq_len", i64, _cache_dim("max_seq_len")),
            Scalar("num_blocks", i64, lambda op: op.num_blocks),
            Scalar("prefix_caching", i1, lambda op: op.prefix_caching),
            Scalar("eviction", i64, lambda op: EVICTION_POLICIES.index(op.eviction)),
            Scalar("swap_blocks", i64, lambda op: op.swap_blocks),
            Scalar("window_tokens", i64, lambda op: op.window_tokens or 0, absent=0),
            Scalar("sink_tokens", i64, lambda op: op.sink_tokens or 0, absent=0),
            Scalar(
                "heavy_hitter_blocks",
                i64,
                lambda op: op.heavy_hitter_blocks or 0,
                absent=0,
            ),
            Scalar(
                "heavy_hitter_score",
                i64,
                lambda op: HEAVY_HITTER_SCORES.index(op.heavy_hitter_score),
            ),
        ),
        (CACHE,),
        lambda op: op.cache.type.element_type,
    ),
    RuntimeFunction(
        llm.AppendKVOp,
        "append_kv",
        (
            CACHE,
            Tensor(4),
            Tensor(4),
            Tensor(1, i32),
            Tensor(2, i32, optional="token_ids"),
        ),
        (LAYER,),
        (CACHE, Tensor(2, i32)),
        _element_of_operand(1),
    ),
    RuntimeFunction(
        llm.BlockTableOp,
        "block_table",
        (CACHE, Tensor(1, i32)),
        (Scalar("width", i64, lambda op: _static_dim(op, 0, 1), absent=-1),),
        (Tensor(2, i32), Tensor(1, i32)),
    ),
    RuntimeFunction(
        llm.LookupKVOp,
        "lookup_kv",
        (CACHE, Tensor(2, i32), Tensor(1, i32)),
        (LAYER, Scalar("max_len", i64, lambda op: _static_dim(op, 0, 1), absent=-1)),
        (Tensor(4), Tensor(4)),
        lambda op: op.keys.type.element_type,
    ),
    RuntimeFunction(
        llm.PagedAttentionOp,
        "paged_attention",
        (Tensor(4), CACHE, Tensor(2, i32), Tensor(1, i32)),
        (
            LAYER,
            Scalar("scale", f32, lambda op: _attention(op).get_scale()),
            Scalar("causal", i1, lambda op: _attention(op).is_causal()),
            Scalar(
                "sliding_window",
                i32,
                lambda op: _attention(op).get_sliding_window() or 0,
                absent=0,
            ),
            Scalar(
                "logits_soft_cap",
                f32,
                lambda op: _attention(op).get_logits_soft_cap() or 0.0,
                absent=0.0,
            ),
            Scalar(
                "sink_tokens",
                i32,
                lambda op: _attention(op).get_sink_tokens() or 0,
                absent=0,
            ),
        ),
        (Tensor(4),),
        _element_of_operand(0),
    ),
    RuntimeFunction(
        llm.FreeSequenceOp,
        "free_sequence",
        (CACHE, Tensor(1, i32)),
        (
            Scalar(
                "priority",
                i64,
                lambda op: NO_PRIORITY if op.priority is None else op.priority,
                absent=NO_PRIORITY,
            ),
        ),
        (CACHE,),
    ),
    RuntimeFunction(
        llm.ForkSequenceOp,
        "fork_sequence",
        (CACHE, Tensor(1, i32), Tensor(1, i32)),
        (),
        (CACHE,),
    ),
    RuntimeFunction(
        llm.ReserveSlotsOp,
        "reserve_slots",
        (CACHE, Tensor(1, i32)),
        (
            Scalar("num_tokens", i64, lambda op: op.num_tokens),
            Scalar("width", i64, lambda op: _static_dim(op, 2, 1), absent=-1),
        ),
        (CACHE, Tensor(3, i32), Tensor(2, i32), Tensor(1, i32)),
    ),
    RuntimeFunction(
        llm.WriteKVOp,
        "write_kv",
        (CACHE, Tensor(4), Tensor(4), Tensor(3, i32)),
        (LAYER,),
        (CACHE,),
        _element_of_operand(1),
    ),
    RuntimeFunction(llm.SwapOutOp, "swap_out", (CACHE, Tensor(1, i32)), (), (CACHE,)),
    RuntimeFunction(llm.SwapInOp, "swap_in", (CACHE, Tensor(1, i32)), (), (CACHE,)),
    RuntimeFunction(
        llm.MatchPrefixOp,
        "match_prefix",
        (CACHE, Tensor(1, i32), Tensor(2, i32)),
        (),
        (CACHE, Tensor(1, i32)),
    ),
)

BY_OP: dict[type[Operation], RuntimeFunction] = {f.op: f for f in FUNCTIONS}


def function_of(op: Operation) -> RuntimeFunction | None:
    """The runtime function `op` lowers to, None for a non-`llm` op."""
    return BY_OP.get(type(op))


def all_callees() -> Iterator[tuple[str, RuntimeFunction, ElementType | None]]:
    """Every callee name the runtime implements."""
    for function in FUNCTIONS:
        for name, element in function.callees():
            yield name, function, element


CALLEES: dict[str, tuple[RuntimeFunction, ElementType | None]] = {
    name: (function, element) for name, function, element in all_callees()
}
"""Callee name -> its function and element type."""


def function_of_call(callee: str) -> RuntimeFunction | None:
    """The runtime function a call of `callee` runs, None for another callee."""
    found = CALLEES.get(callee)
    return None if found is None else found[0]


def is_cache_type(type_attr: Attribute) -> bool:
    return isinstance(type_attr, PagedKVCacheType)
