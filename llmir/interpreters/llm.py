"""Interpreter functions for both forms of `llm` IR.

`LLMFunctions` runs the `llm` ops and the ``func.call``s of the runtime
functions that ``convert-llm-to-func`` produces.  Both are derived from the
one contract, `llmir.abi`, and both end in the same implementation in
`llmir.interpreters.runtime_calls`, so a module gives bit-identical results
before and after lowering.  The set of registered implementations is fixed
when this module is imported: one `@impl` per `llm` op and one
`@impl_external` per callee the ABI names (per element type of the
registry).

A cache value (an ``!llm.paged_kv_cache``, or the ``!llvm.ptr`` handle it
lowers to) is a `KVCache` object; ops that write the cache return the same
object.  Tensors are `ShapedArray`s bridged to numpy without copies
(`llmir.interpreters.arrays`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from xdsl.dialects import arith, func
from xdsl.dialects.builtin import FloatAttr, IntegerAttr, TensorType
from xdsl.interpreter import (
    Interpreter,
    InterpreterFunctions,
    PythonValues,
    impl,
    impl_external,
    register_impls,
)
from xdsl.interpreters.shaped_array import ShapedArray
from xdsl.ir import Attribute, Operation

from llmir import abi
from llmir.interpreters import runtime_calls
from llmir.interpreters.arrays import from_numpy, to_numpy
from llmir.interpreters.runtime_calls import CallContext
from llmir.interpreters.xdsl_extras import XDSLExtraFunctions
from llmir.runtime.dtypes import ElementType

RuntimeCall = Callable[..., tuple[Any, ...]]


@dataclass(frozen=True)
class _Prepared:
    """What an op needs at each execution, read from the op once."""

    element: ElementType | None
    scalars: tuple[abi.Number | None, ...]
    result_types: tuple[Attribute | None, ...]
    """Element type of each tensor result; None for a cache result."""
    operand_args: tuple[int | None, ...]
    """Per ABI operand, the index of the op's operand (None: an optional
    operand the op does not have)."""


def _result_elements(types: Sequence[Attribute]) -> tuple[Attribute | None, ...]:
    return tuple(
        cast(TensorType[Any], t).element_type if isinstance(t, TensorType) else None
        for t in types
    )


def _as_python(value: Any) -> Any:
    """Interpreter values as the runtime takes them: tensors as numpy views,
    scalar attributes as Python numbers, caches as they are."""
    if isinstance(value, ShapedArray):
        return to_numpy(cast(ShapedArray[Any], value))
    if isinstance(value, IntegerAttr | FloatAttr):
        return value.value.data
    return value


@dataclass(frozen=True)
class _Binding:
    """One ABI function bound to its implementation, with what its results
    are, worked out once."""

    function: abi.RuntimeFunction
    runtime: RuntimeCall
    passthrough: tuple[int | None, ...]
    """Per op result: the operand index of the cache it passes through
    (a new cache version), or None for a result the call returns."""
    num_operands: int

    @staticmethod
    def of(function: abi.RuntimeFunction) -> _Binding:
        cache_operand = (
            function.operands.index(abi.CACHE)
            if abi.CACHE in function.operands
            else None
        )
        returned = function.returned_results
        passthrough = tuple(
            cache_operand if slot == abi.CACHE and slot not in returned else None
            for slot in function.results
        )
        return _Binding(
            function,
            getattr(runtime_calls, function.base),
            passthrough,
            len(function.operands),
        )


class _LLMFunctionsBase(InterpreterFunctions):
    def __init__(self, context: CallContext) -> None:
        self.context = context
        self._prepared: dict[Operation, _Prepared] = {}
        self._callees: dict[Operation, Operation] = {}
        self._constant_scalars: dict[
            Operation, tuple[abi.Number | None, ...] | None
        ] = {}

    @impl(func.CallOp)
    def run_func_call(
        self, interpreter: Interpreter, op: func.CallOp, args: PythonValues
    ) -> PythonValues:
        """A call of a runtime function goes straight to its implementation;
        any other call to its callee, looked up once per call site (xDSL's
        own scans the module's symbols at every call)."""
        target = _CALLEES.get(op.callee.root_reference.data)
        if target is not None:
            binding, element, result_types = target
            scalars = self._constant_scalars.get(op)
            if scalars is None and op not in self._constant_scalars:
                scalars = self._constant_scalars[op] = _constant_scalars(binding, op)
            if scalars is not None:
                return self.run_call(
                    binding,
                    element,
                    result_types,
                    args[: binding.num_operands],
                    scalars,
                )
            return self.run_call(binding, element, result_types, args)
        callee = self._callees.get(op)
        if callee is None:
            callee = self._callees[op] = interpreter.get_op_for_symbol(op.callee)
        return interpreter.call_op(callee, args)

    @property
    def caches(self) -> list[Any]:
        """Every cache created so far, in order."""
        return self.context.caches

    def run_op(
        self, binding: _Binding, op: Operation, args: PythonValues
    ) -> PythonValues:
        prepared = self._prepared.get(op)
        if prepared is None:
            function = binding.function
            prepared = self._prepared[op] = _Prepared(
                function.element_of(op),
                function.decode(function.encode(op)),
                _result_elements(op.result_types),
                _operand_args(function.operand_values(op)),
            )
        values = [
            None if i is None else _as_python(args[i]) for i in prepared.operand_args
        ]
        returned = iter(
            binding.runtime(self.context, prepared.element, *values, *prepared.scalars)
        )
        return tuple(
            values[cache] if cache is not None else _to_interpreter(next(returned), t)
            for cache, t in zip(binding.passthrough, prepared.result_types, strict=True)
        )

    def run_call(
        self,
        binding: _Binding,
        element: ElementType | None,
        result_types: tuple[Attribute | None, ...],
        args: PythonValues,
        scalars: tuple[abi.Number | None, ...] | None = None,
    ) -> PythonValues:
        """Run a runtime call on `args` (operands, then encoded scalars), or
        on the operands `args` and the already decoded `scalars`."""
        count = binding.num_operands
        values = [_as_python(a) for a in args]
        if scalars is None:
            scalars = binding.function.decode(values[count:])
        returned = binding.runtime(self.context, element, *values[:count], *scalars)
        return tuple(
            _to_interpreter(value, element_type)
            for value, element_type in zip(returned, result_types, strict=True)
        )


def _operand_args(values: Sequence[object | None]) -> tuple[int | None, ...]:
    """The op operand index of each present ABI operand, None where absent."""
    args: list[int | None] = []
    given = 0
    for value in values:
        args.append(None if value is None else given)
        given += value is not None
    return tuple(args)


def _constant_scalars(
    binding: _Binding, op: func.CallOp
) -> tuple[abi.Number | None, ...] | None:
    """The decoded scalars of a call whose scalar operands are all
    `arith.constant`s (as `convert-llm-to-func` emits them): they never
    change, so they are decoded once.  None when one may vary."""
    values: list[Any] = []
    for operand in op.arguments[binding.num_operands :]:
        owner = operand.owner
        if not isinstance(owner, arith.ConstantOp):
            return None
        values.append(_as_python(owner.value))
    return binding.function.decode(values)


def _to_interpreter(value: Any, element_type: Attribute | None) -> Any:
    return value if element_type is None else from_numpy(value, element_type)


def _op_impl(function: abi.RuntimeFunction) -> Any:
    binding = _Binding.of(function)

    def run(
        self: _LLMFunctionsBase, interpreter: Interpreter, op: Operation, args: Any
    ) -> PythonValues:
        return self.run_op(binding, op, args)

    return impl(function.op)(run)  # pyright: ignore[reportArgumentType]


def _call_impl(name: str) -> Any:
    def run(
        self: _LLMFunctionsBase, interpreter: Interpreter, op: Operation, args: Any
    ) -> PythonValues:
        return self.run_call(*_CALLEES[name], args)

    return impl_external(name)(run)


# One implementation per op and per callee, fixed at import.
_CALLEES: dict[
    str, tuple[_Binding, ElementType | None, tuple[Attribute | None, ...]]
] = {
    name: (
        _Binding.of(function),
        element,
        _result_elements(function.signature(element)[1]),
    )
    for name, (function, element) in abi.CALLEES.items()
}
for _function in abi.FUNCTIONS:
    setattr(_LLMFunctionsBase, f"op_{_function.base}", _op_impl(_function))
for _name, _function, _element in abi.all_callees():
    setattr(_LLMFunctionsBase, f"call_{_name}", _call_impl(_name))


@register_impls
class LLMFunctions(_LLMFunctionsBase):
    """The `llm` ops and their lowered runtime calls, over the caches that
    `context.create_cache` makes."""


def register_llmir_implementations(
    interpreter: Interpreter, context: CallContext
) -> None:
    """Register everything llmir needs on top of xDSL's own implementations:
    the `llm` ops, their runtime calls, and the additions of
    `llmir.interpreters.xdsl_extras`."""
    interpreter.register_implementations(XDSLExtraFunctions(), override=True)
    # Overrides xDSL's func.call, for runtime calls without detours.
    interpreter.register_implementations(LLMFunctions(context), override=True)
