"""
Lowers every `llm` op to a `func.call` of an llmir runtime function.

Each op becomes a call whose operands are the op's operands followed by its
attributes materialized as `arith.constant`s, so nothing is lost:

    op                     callee base              trailing constant operands
    llm.create_kv_cache    llmir_create_kv_cache    num_blocks : i64
    llm.append_kv          llmir_append_kv          layer : i32
    llm.block_table        llmir_block_table        -
    llm.lookup_kv          llmir_lookup_kv          layer : i32
    llm.paged_attention    llmir_paged_attention    layer : i32, scale : f32,
                                                    causal : i1,
                                                    sliding_window : i32,
                                                    logits_soft_cap : f32
    llm.free_sequence      llmir_free_sequence      -

(`sliding_window` and `logits_soft_cap` pass 0 for "off": the verifier
requires both to be positive when present.  `block_size`, `max_seq_len`,
`num_heads` and `head_dim` are verified to equal
what the types already say, and the types travel with the call.)

Callee names.  `func.call` must match its callee's declared type exactly, so
two calls with different tensor shapes cannot share one declaration.  We keep
the static shapes (the runtime and any later code generation profit from them)
and give each distinct signature its own declaration, named
``<base>__<operand types>__<result types>`` with every type mangled to an
identifier-safe token (see `mangle_type`), e.g.

    llmir_block_table__kv_f16_12_16_64_16_4096_t2xi32__t2x128xi32_t2xi32

so the name is a pure function of the signature: identical signatures share a
declaration, and `runtime_base_name` recovers the base from any mangled name.
Declarations are private `func.func`s inserted once per module (as
`xdsl/transforms/lower_mpi.py` does for MPI); re-running the pass on a lowered
module changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import arith, func
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    TensorType,
    f32,
    i1,
    i32,
    i64,
)
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.traits import SymbolTable

from llmir.dialects import llm
from llmir.dialects.llm_type import PagedKVCacheType

RUNTIME_PREFIX = "llmir_"
"""Every runtime function's name starts with this."""

_SIGNATURE_SEPARATOR = "__"


def mangle_type(type_attr: Attribute) -> str:
    """An identifier-safe token for a type, unique per type we lower.

    `tensor<2x?x16xf16>` -> `t2xdx16xf16`; `i32` -> `i32`;
    `!llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>` -> `kv_f16_12_16_64_16_4096`.
    """
    match type_attr:
        case PagedKVCacheType():
            params = (
                type_attr.num_layers,
                type_attr.num_heads,
                type_attr.head_dim,
                type_attr.block_size,
                type_attr.max_seq_len,
            )
            element = mangle_type(type_attr.element_type)
            return "kv_" + "_".join([element, *(str(p) for p in params)])
        case TensorType():
            dims = [
                "d" if d == DYNAMIC_INDEX else str(d) for d in type_attr.get_shape()
            ]
            return "t" + "x".join([*dims, mangle_type(type_attr.element_type)])
        case IntegerType():
            return f"i{type_attr.width.data}"
        case Float16Type():
            return "f16"
        case BFloat16Type():
            return "bf16"
        case Float32Type():
            return "f32"
        case Float64Type():
            return "f64"
        case _:
            raise ValueError(f"cannot mangle type {type_attr} into a callee name")


def runtime_callee_name(
    base: str, input_types: Sequence[Attribute], result_types: Sequence[Attribute]
) -> str:
    """The mangled name of runtime function `base` at this signature."""
    inputs = "_".join(mangle_type(t) for t in input_types)
    results = "_".join(mangle_type(t) for t in result_types)
    return _SIGNATURE_SEPARATOR.join((base, inputs, results))


def runtime_base_name(callee: str) -> str:
    """`llmir_append_kv__...__...` -> `llmir_append_kv`."""
    return callee.split(_SIGNATURE_SEPARATOR, 1)[0]


def _constant(
    name: str, value: int | float | bool, type_attr: Attribute
) -> arith.ConstantOp:
    if isinstance(type_attr, IntegerType):
        constant = arith.ConstantOp(IntegerAttr(int(value), type_attr))
    else:
        assert isinstance(type_attr, Float32Type)
        constant = arith.ConstantOp(FloatAttr(float(value), type_attr))
    constant.result.name_hint = name
    return constant


def _replace_with_call(
    rewriter: PatternRewriter,
    op: Operation,
    base: str,
    constants: Sequence[tuple[str, int | float | bool, Attribute]] = (),
) -> None:
    """Replace `op` by a call of runtime function `base` on its operands and
    the given (name, value, type) attribute constants."""
    constant_ops = [_constant(*constant) for constant in constants]
    arguments: list[SSAValue] = [
        *op.operands,
        *(c.result for c in constant_ops),
    ]
    result_types = list(op.result_types)
    callee = runtime_callee_name(base, [a.type for a in arguments], result_types)
    call = func.CallOp(callee, arguments, result_types)
    rewriter.replace(op, [*constant_ops, call], call.results)


class LowerCreateKVCache(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(
        self, op: llm.CreateKVCacheOp, rewriter: PatternRewriter, /
    ) -> None:
        _replace_with_call(
            rewriter, op, "llmir_create_kv_cache", [("num_blocks", op.num_blocks, i64)]
        )


class LowerAppendKV(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: llm.AppendKVOp, rewriter: PatternRewriter, /):
        _replace_with_call(rewriter, op, "llmir_append_kv", [("layer", op.layer, i32)])


class LowerBlockTable(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: llm.BlockTableOp, rewriter: PatternRewriter, /):
        _replace_with_call(rewriter, op, "llmir_block_table")


class LowerLookupKV(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: llm.LookupKVOp, rewriter: PatternRewriter, /):
        _replace_with_call(rewriter, op, "llmir_lookup_kv", [("layer", op.layer, i32)])


class LowerPagedAttention(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: llm.PagedAttentionOp, rewriter: PatternRewriter, /):
        _replace_with_call(
            rewriter,
            op,
            "llmir_paged_attention",
            [
                ("layer", op.layer, i32),
                ("scale", op.scale, f32),
                ("causal", op.causal, i1),
                # 0 encodes "off": both attributes must be positive when set.
                ("sliding_window", op.sliding_window or 0, i32),
                ("logits_soft_cap", op.logits_soft_cap or 0.0, f32),
            ],
        )


class LowerFreeSequence(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: llm.FreeSequenceOp, rewriter: PatternRewriter, /):
        _replace_with_call(rewriter, op, "llmir_free_sequence")


def add_runtime_declarations(module: ModuleOp) -> None:
    """Declare each runtime function the module calls, once, as a private
    external `func.func` whose type is taken from its call sites."""
    signatures: dict[str, tuple[Sequence[Attribute], Sequence[Attribute]]] = {}
    for op in module.walk():
        if isinstance(op, func.CallOp):
            callee = op.callee.string_value()
            if callee.startswith(RUNTIME_PREFIX):
                signatures[callee] = (op.arguments.types, op.result_types)
    for callee, (inputs, results) in signatures.items():
        if SymbolTable.lookup_symbol(module, callee) is None:
            declaration = func.FuncOp.external(callee, inputs, results)
            SymbolTable.insert_or_update(module, declaration)


@dataclass(frozen=True)
class ConvertLLMToFuncPass(ModulePass):
    """
    Rewrites `llm` ops into calls of llmir runtime functions and declares
    those functions (see the module docstring for the calling convention).
    """

    name = "convert-llm-to-func"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(
            GreedyRewritePatternApplier(
                [
                    LowerCreateKVCache(),
                    LowerAppendKV(),
                    LowerBlockTable(),
                    LowerLookupKV(),
                    LowerPagedAttention(),
                    LowerFreeSequence(),
                ]
            ),
            apply_recursively=False,
        ).rewrite_module(op)
        add_runtime_declarations(op)
