"""
Lowers every `llm` op to a `func.call` of an llmir runtime function.

The calling convention is `llmir.abi` (and ``docs/abi.md``): the cache
becomes an opaque ``!llvm.ptr`` handle everywhere in the module, tensors are
passed with dynamic shapes so one private declaration per callee serves every
shape, and attributes trail as ``arith.constant`` operands.  For example

    %kv1, %idx = llm.append_kv %kv, %k, %v, %ids {layer = 1 : i32}
        : (!cache, tensor<2x3x4x8xf16>, ...) -> (!cache, tensor<2x3xi32>)

becomes

    %k_1 = tensor.cast %k : tensor<2x3x4x8xf16> to tensor<?x?x?x?xf16>
    ...
    %idx_1 = func.call @llmir_append_kv_f16(%kv, %k_1, %v_1, %ids_1, %layer)
        : (!llvm.ptr, tensor<?x?x?x?xf16>, ..., i32) -> tensor<?x?xi32>
    %idx = tensor.cast %idx_1 : tensor<?x?xi32> to tensor<2x3xi32>

and every use of ``%kv1`` becomes a use of ``%kv``: after lowering, the cache
is the one mutable object the runtime holds.

Placement, so that the lowered program does no more work than it must:

* constants are created once per function, at the top of its entry block;
* a tensor is cast to its dynamic type once, right after it is defined, and
  that cast serves every call; a call's dynamic result feeds other calls
  directly, and is cast back to its static type only for other users;
* a read whose results are all unused is dropped.

Re-running the pass on a lowered module changes nothing; the lowered module
verifies and round-trips.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdsl.context import Context
from xdsl.dialects import arith, func, scf, tensor
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import Attribute, Block, BlockArgument, Operation, OpResult, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    TypeConversionPattern,
    attr_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint, Rewriter
from xdsl.traits import IsolatedFromAbove, SymbolTable
from xdsl.utils.exceptions import PassFailedException

from llmir import abi
from llmir.dialects.interfaces import KVCacheInterface
from llmir.dialects.llm_type import PagedKVCacheType


@dataclass
class _FunctionScope:
    """Per isolated region (a function body): its constants and casts."""

    entry: Block
    constants: dict[tuple[str, Attribute], SSAValue] = field(
        default_factory=dict[tuple[str, Attribute], SSAValue]
    )
    """Scalar constants by (name, value), empty tensors by ("empty", type)."""
    last_constant: Operation | None = None


@dataclass
class LowerToRuntimeCall(RewritePattern):
    """Rewrites any op with an entry in `llmir.abi` into its runtime call."""

    scopes: dict[Block, _FunctionScope] = field(
        default_factory=dict[Block, _FunctionScope]
    )
    casts: dict[tuple[SSAValue, Attribute], SSAValue] = field(
        default_factory=dict[tuple[SSAValue, Attribute], SSAValue]
    )
    """(value, type) -> the value cast to that type (tensor.cast chains are
    looked through both ways)."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        function = abi.function_of(op)
        if function is None:
            return
        try:
            element = function.element_of(op)
        except ValueError as e:
            raise PassFailedException(str(e)) from e
        inputs, results = function.signature(element)
        scope = self._scope(op)
        arguments: list[SSAValue] = []
        for operand, slot, want in zip(
            function.operand_values(op), function.operands, inputs, strict=False
        ):
            if operand is None:
                arguments.append(self._empty(scope, want, rewriter))
            elif slot == abi.CACHE or operand.type == want:
                # Cache values become handles when the module's types are
                # converted, after every op is lowered.
                arguments.append(operand)
            else:
                arguments.append(self._cast(operand, want, rewriter))
        for scalar, value in zip(function.scalars, function.encode(op), strict=True):
            arguments.append(self._constant(scope, scalar, value, rewriter))
        call = func.CallOp(function.callee(element), arguments, results)
        rewriter.insert(call, InsertPoint.before(op))

        returned = iter(call.results)
        replacements: list[SSAValue | None] = []
        for result, slot in zip(op.results, function.results, strict=True):
            if slot == abi.CACHE and slot not in function.returned_results:
                # A new cache version is the handle the op was given.
                assert isinstance(op, KVCacheInterface)
                replacements.append(op.get_cache())
                continue
            value = next(returned)
            value.name_hint = result.name_hint
            replacements.append(self._uncast(value, result.type, rewriter))
        rewriter.replace(op, [], replacements)

    # -- placement ---------------------------------------------------------------

    def _scope(self, op: Operation) -> _FunctionScope:
        region_op = op.parent_op()
        while region_op is not None and not region_op.has_trait(IsolatedFromAbove):
            region_op = region_op.parent_op()
        assert region_op is not None, "llm ops live inside a function"
        entry = region_op.regions[0].blocks.first
        assert entry is not None
        if entry not in self.scopes:
            self.scopes[entry] = _FunctionScope(entry)
        return self.scopes[entry]

    def _constant(
        self,
        scope: _FunctionScope,
        scalar: abi.Scalar,
        value: abi.Number,
        rewriter: PatternRewriter,
    ) -> SSAValue:
        attribute = scalar.attribute(value)
        key = (scalar.name, attribute)
        if key not in scope.constants:
            constant = arith.ConstantOp(attribute)
            constant.result.name_hint = scalar.name
            where = (
                InsertPoint.at_start(scope.entry)
                if scope.last_constant is None
                else InsertPoint.after(scope.last_constant)
            )
            rewriter.insert(constant, where)
            scope.last_constant = constant
            scope.constants[key] = constant.result
        return scope.constants[key]

    def _empty(
        self, scope: _FunctionScope, want: Attribute, rewriter: PatternRewriter
    ) -> SSAValue:
        """An absent optional tensor: an empty tensor of `want`'s rank and
        element type (one per function), cast to `want`."""
        assert isinstance(want, TensorType)
        key = ("empty", want)
        if key not in scope.constants:
            empty = tensor.EmptyOp(
                [], TensorType(want.element_type, [0] * want.get_num_dims())
            )
            empty.tensor.name_hint = "none"
            where = (
                InsertPoint.at_start(scope.entry)
                if scope.last_constant is None
                else InsertPoint.after(scope.last_constant)
            )
            rewriter.insert(empty, where)
            scope.last_constant = empty
            scope.constants[key] = self._cast(empty.tensor, want, rewriter)
            scope.last_constant = scope.constants[key].owner  # pyright: ignore[reportAttributeAccessIssue]
        return scope.constants[key]

    def _cast(
        self, value: SSAValue, want: Attribute, rewriter: PatternRewriter
    ) -> SSAValue:
        """`value` as type `want`: looking through an existing cast, else with
        one new cast right after `value` is defined."""
        if (value, want) in self.casts:
            return self.casts[(value, want)]
        owner = value.owner
        if isinstance(owner, tensor.CastOp) and owner.source.type == want:
            return owner.source
        assert isinstance(want, TensorType)
        cast = tensor.CastOp(value, want)
        cast.dest.name_hint = value.name_hint
        if isinstance(value, BlockArgument):
            rewriter.insert(cast, InsertPoint.at_start(value.block))
        else:
            assert isinstance(value, OpResult)
            rewriter.insert(cast, InsertPoint.after(value.op))
        self.casts[(value, want)] = cast.dest
        return cast.dest

    def _uncast(
        self, value: SSAValue, static: Attribute, rewriter: PatternRewriter
    ) -> SSAValue | None:
        """The call result `value` for users of the op's `static` result type:
        itself if the types agree, else a cast after the call."""
        if value.type == static or isinstance(static, PagedKVCacheType):
            # A created cache is its handle (the types agree once the module's
            # cache types are converted).
            return value
        assert isinstance(static, TensorType)
        cast = tensor.CastOp(value, static)
        cast.dest.name_hint = value.name_hint
        assert isinstance(value, OpResult)
        rewriter.insert(cast, InsertPoint.after(value.op))
        # Later calls taking this value use the dynamic one directly.
        self.casts[(cast.dest, value.type)] = value
        return cast.dest


class CacheToHandle(TypeConversionPattern):
    """`!llm.paged_kv_cache<...>` -> `!llvm.ptr` everywhere: function
    signatures, loop-carried values, block arguments (apply with
    ``recursive=True`` to reach the types nested in function types)."""

    @attr_type_rewrite_pattern
    def convert_type(self, typ: PagedKVCacheType, /) -> Attribute:
        return abi.HANDLE


def add_runtime_declarations(module: ModuleOp) -> None:
    """Declare each runtime function the module calls, once, as a private
    external `func.func` with its `llmir.abi` signature."""
    known = {name: (function, element) for name, function, element in abi.all_callees()}
    called: list[str] = []
    for op in module.walk():
        if isinstance(op, func.CallOp):
            callee = op.callee.string_value()
            if callee in known and callee not in called:
                called.append(callee)
    for callee in called:
        if SymbolTable.lookup_symbol(module, callee) is None:
            function, element = known[callee]
            inputs, results = function.signature(element)
            declaration = func.FuncOp.external(callee, inputs, results)
            SymbolTable.insert_or_update(module, declaration)


def _fold_casts_into_loops(module: ModuleOp) -> None:
    """Carry a loop value in its dynamic form when every step casts it to
    that form on entry and back from it on exit (MLIR's tensor.cast folding
    into scf.for): the casts then happen once, around the loop, instead of
    at every step."""
    # Innermost loops first: folding an inner loop can make its outer one
    # foldable (so one lowering does what a second would).
    loops = [op for op in module.walk() if isinstance(op, scf.ForOp)]
    for loop in reversed(loops):
        body = loop.body.block
        step_yield = body.last_op
        assert isinstance(step_yield, scf.YieldOp)
        for index, arg in enumerate(body.args[1:]):
            users = [use.operation for use in arg.uses]
            if not users or not all(isinstance(u, tensor.CastOp) for u in users):
                continue
            cast_users = [u for u in users if isinstance(u, tensor.CastOp)]
            dynamic = {u.dest.type for u in cast_users}
            if len(dynamic) != 1:
                continue
            (wide,) = dynamic
            back = step_yield.operands[index].owner
            if not (isinstance(back, tensor.CastOp) and back.source.type == wide):
                continue
            static = arg.type
            assert isinstance(wide, TensorType) and isinstance(static, TensorType)
            # In: the initial value cast once, before the loop.
            entry = tensor.CastOp(loop.iter_args[index], wide)
            entry.dest.name_hint = loop.iter_args[index].name_hint
            Rewriter.insert_op(entry, InsertPoint.before(loop))
            loop.operands[3 + index] = entry.dest
            # Through: the block argument takes the dynamic type; its casts
            # to that type disappear; the step yields the uncast value.
            wide_arg = Rewriter.replace_value_with_new_type(arg, wide)
            for cast in cast_users:
                cast.dest.replace_all_uses_with(wide_arg)
                Rewriter.erase_op(cast)
            step_yield.operands[index] = back.source
            # Out: the loop result, cast back for its users after the loop.
            result = Rewriter.replace_value_with_new_type(loop.res[index], wide)
            if result.uses:
                exit_cast = tensor.CastOp(result, static)
                exit_cast.dest.name_hint = result.name_hint
                Rewriter.insert_op(exit_cast, InsertPoint.after(loop))
                result.replace_uses_with_if(
                    exit_cast.dest,
                    lambda use, own=exit_cast: use.operation is not own,
                )


def _erase_unused_casts(module: ModuleOp) -> None:
    for op in list(module.walk()):
        if isinstance(op, tensor.CastOp) and not op.dest.uses:
            Rewriter.erase_op(op)


@dataclass(frozen=True)
class ConvertLLMToFuncPass(ModulePass):
    """
    Rewrites `llm` ops into calls of llmir runtime functions and declares
    those functions (see the module docstring and `llmir.abi`).
    """

    name = "convert-llm-to-func"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(
            LowerToRuntimeCall(), apply_recursively=False
        ).rewrite_module(op)
        PatternRewriteWalker(CacheToHandle(recursive=True)).rewrite_module(op)
        _fold_casts_into_loops(op)
        _erase_unused_casts(op)
        add_runtime_declarations(op)
