"""Interpreter functions for the `llm` dialect and its lowered runtime calls.

* `LLMFunctions` runs the `llm` ops themselves.
* `LLMRuntimeFunctions` runs the external `llmir_*` functions that
  `convert-llm-to-func` declares.  Their names are mangled per signature
  (see `llmir.transforms.convert_llm_to_func`), so the implementations are
  registered per module: `runtime_functions_for(module)` builds a
  `@register_impls` class with one `@impl_external` entry per declared
  `llmir_*` function, each bound to the implementation of its base name.
* `DenseConstantFunctions` adds `arith.constant dense<...> : tensor<...>`,
  which xDSL's arith interpreter leaves out and real programs need (sequence
  ids, say).

A cache value is a handle to a `llmir.runtime.PagedKVCache`; ops that write
the cache return the same handle (the IR's new SSA version of a cache is the
same mutable object at run time).  Tensors are `ShapedArray`s bridged to
numpy without copies (`llmir.interpreters.arrays`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from xdsl.dialects import arith, func
from xdsl.dialects.builtin import (
    DenseIntOrFPElementsAttr,
    FloatAttr,
    IndexType,
    IntegerAttr,
    ModuleOp,
    TensorType,
)
from xdsl.interpreter import (
    Interpreter,
    InterpreterFunctions,
    PythonValues,
    impl,
    impl_attr,
    impl_external,
    register_impls,
)
from xdsl.interpreters.arith import ArithFunctions
from xdsl.interpreters.shaped_array import ShapedArray
from xdsl.ir import Attribute, Operation
from xdsl.utils.exceptions import InterpretationError

from llmir.dialects import llm
from llmir.dialects.llm_type import PagedKVCacheType
from llmir.interpreters import runtime_calls
from llmir.interpreters.arrays import from_numpy, to_numpy
from llmir.transforms.convert_llm_to_func import RUNTIME_PREFIX, runtime_base_name

Array = Any


def _np(value: Any) -> Array:
    return to_numpy(cast(ShapedArray[Any], value))


def _wrap(array: Array, type_attr: Attribute) -> ShapedArray[Any]:
    assert isinstance(type_attr, TensorType)
    return from_numpy(array, cast(TensorType[Any], type_attr).element_type)


def _scalar(value: Any) -> int | float:
    """The Python number of an interpreter scalar (IntegerAttr/FloatAttr)."""
    if isinstance(value, IntegerAttr | FloatAttr):
        return value.value.data
    return cast(int | float, value)


@register_impls
class LLMFunctions(InterpreterFunctions):
    """Executes `llm` ops on the llmir runtime of `device` ("cpu" or "cuda")."""

    def __init__(self, device: str = "cpu", caches: list[Any] | None = None) -> None:
        self.device = device
        self.caches: list[Any] = [] if caches is None else caches
        """Every cache created so far (for statistics); may be shared."""

    @impl(llm.CreateKVCacheOp)
    def run_create_kv_cache(
        self, interpreter: Interpreter, op: llm.CreateKVCacheOp, args: PythonValues
    ) -> PythonValues:
        cache_type = op.cache.type
        assert isinstance(cache_type, PagedKVCacheType)
        cache = runtime_calls.create_kv_cache(cache_type, op.num_blocks, self.device)
        self.caches.append(cache)
        return (cache,)

    @impl(llm.AppendKVOp)
    def run_append_kv(
        self, interpreter: Interpreter, op: llm.AppendKVOp, args: PythonValues
    ) -> PythonValues:
        cache, keys, values, seq_ids = args
        indices = runtime_calls.append_kv(
            cache, _np(keys), _np(values), _np(seq_ids), op.layer
        )
        return cache, _wrap(indices, op.block_indices.type)

    @impl(llm.BlockTableOp)
    def run_block_table(
        self, interpreter: Interpreter, op: llm.BlockTableOp, args: PythonValues
    ) -> PythonValues:
        cache, seq_ids = args
        table, lens = runtime_calls.block_table(cache, _np(seq_ids), op.result_types)
        return _wrap(table, op.block_table.type), _wrap(lens, op.seq_lens.type)

    @impl(llm.LookupKVOp)
    def run_lookup_kv(
        self, interpreter: Interpreter, op: llm.LookupKVOp, args: PythonValues
    ) -> PythonValues:
        cache, table, lens = args
        keys, values = runtime_calls.lookup_kv(
            cache, _np(table), _np(lens), op.layer, op.result_types
        )
        return _wrap(keys, op.keys.type), _wrap(values, op.values.type)

    @impl(llm.PagedAttentionOp)
    def run_paged_attention(
        self, interpreter: Interpreter, op: llm.PagedAttentionOp, args: PythonValues
    ) -> PythonValues:
        query, cache, table, lens = args
        output = runtime_calls.paged_attention(
            _np(query),
            op.query.type,
            cache,
            _np(table),
            _np(lens),
            op.layer,
            op.scale,
            op.causal,
            op.sliding_window,
            op.logits_soft_cap,
            op.output.type,
        )
        return (_wrap(output, op.output.type),)

    @impl(llm.FreeSequenceOp)
    def run_free_sequence(
        self, interpreter: Interpreter, op: llm.FreeSequenceOp, args: PythonValues
    ) -> PythonValues:
        cache, seq_ids = args
        runtime_calls.free_sequence(cache, _np(seq_ids))
        return (cache,)


# --- lowered form ---------------------------------------------------------------

RuntimeImpl = Callable[[Any, Interpreter, Operation, PythonValues], PythonValues]


def _call_result_types(op: Operation) -> tuple[Attribute, ...]:
    """Result types of the callee `op` (a `func.func` declaration)."""
    assert isinstance(op, func.FuncOp)
    return tuple(op.function_type.outputs.data)


def _call_input_types(op: Operation) -> tuple[Attribute, ...]:
    assert isinstance(op, func.FuncOp)
    return tuple(op.function_type.inputs.data)


class LLMRuntimeFunctions(InterpreterFunctions):
    """Implementations of the lowered runtime calls, by base name.

    Not registered by itself: `runtime_functions_for(module)` derives the
    registered class that maps each mangled callee to these methods.
    """

    def __init__(self, device: str = "cpu", caches: list[Any] | None = None) -> None:
        self.device = device
        self.caches: list[Any] = [] if caches is None else caches
        """Every cache created so far (for statistics); may be shared."""

    def llmir_create_kv_cache(
        self, interpreter: Interpreter, op: Operation, args: PythonValues
    ) -> PythonValues:
        (num_blocks,) = args
        cache_type = _call_result_types(op)[0]
        assert isinstance(cache_type, PagedKVCacheType)
        cache = runtime_calls.create_kv_cache(
            cache_type, int(_scalar(num_blocks)), self.device
        )
        self.caches.append(cache)
        return (cache,)

    def llmir_append_kv(
        self, interpreter: Interpreter, op: Operation, args: PythonValues
    ) -> PythonValues:
        cache, keys, values, seq_ids, layer = args
        indices = runtime_calls.append_kv(
            cache, _np(keys), _np(values), _np(seq_ids), int(_scalar(layer))
        )
        return cache, _wrap(indices, _call_result_types(op)[1])

    def llmir_block_table(
        self, interpreter: Interpreter, op: Operation, args: PythonValues
    ) -> PythonValues:
        cache, seq_ids = args
        result_types = _call_result_types(op)
        table, lens = runtime_calls.block_table(cache, _np(seq_ids), result_types)
        return _wrap(table, result_types[0]), _wrap(lens, result_types[1])

    def llmir_lookup_kv(
        self, interpreter: Interpreter, op: Operation, args: PythonValues
    ) -> PythonValues:
        cache, table, lens, layer = args
        result_types = _call_result_types(op)
        keys, values = runtime_calls.lookup_kv(
            cache, _np(table), _np(lens), int(_scalar(layer)), result_types
        )
        return _wrap(keys, result_types[0]), _wrap(values, result_types[1])

    def llmir_paged_attention(
        self, interpreter: Interpreter, op: Operation, args: PythonValues
    ) -> PythonValues:
        query, cache, table, lens, layer, scale, causal, window, soft_cap = args
        result_type = _call_result_types(op)[0]
        output = runtime_calls.paged_attention(
            _np(query),
            _call_input_types(op)[0],
            cache,
            _np(table),
            _np(lens),
            int(_scalar(layer)),
            float(_scalar(scale)),
            bool(_scalar(causal)),
            int(_scalar(window)) or None,  # 0 encodes "no window"
            float(_scalar(soft_cap)) or None,  # 0.0 encodes "no cap"
            result_type,
        )
        return (_wrap(output, result_type),)

    def llmir_free_sequence(
        self, interpreter: Interpreter, op: Operation, args: PythonValues
    ) -> PythonValues:
        cache, seq_ids = args
        runtime_calls.free_sequence(cache, _np(seq_ids))
        return (cache,)


def runtime_functions_for(
    module: ModuleOp, device: str = "cpu", caches: list[Any] | None = None
) -> LLMRuntimeFunctions:
    """An `LLMRuntimeFunctions` whose registered external functions are the
    `llmir_*` declarations of `module` (unknown `llmir_*` names are left
    unregistered, so the interpreter reports them by name)."""
    externals: dict[str, Any] = {}
    for op in module.walk():
        if not isinstance(op, func.FuncOp) or not op.is_declaration:
            continue
        callee = op.sym_name.data
        base = runtime_base_name(callee)
        if not callee.startswith(RUNTIME_PREFIX):
            continue
        method = getattr(LLMRuntimeFunctions, base, None)
        if method is None:
            continue
        externals[f"_external_{len(externals)}"] = impl_external(callee)(
            _forward(method)
        )
    registered = register_impls(
        type("LLMModuleRuntimeFunctions", (LLMRuntimeFunctions,), externals)
    )
    return registered(device, caches)


def _forward(method: RuntimeImpl) -> RuntimeImpl:
    # A fresh function object per callee: impl_external tags the function it
    # is given, and one method may serve several mangled names.
    def forward(
        self: Any, interpreter: Interpreter, op: Operation, args: PythonValues
    ) -> PythonValues:
        return method(self, interpreter, op, args)

    return forward


# --- dense tensor constants -----------------------------------------------------


@register_impls
class DenseConstantFunctions(ArithFunctions):
    """xDSL's arith functions plus `arith.constant` of dense tensors.

    Scalar float and non-index integer constants are answered here too, with
    the same value xDSL's implementation returns (the attribute itself): its
    generic `isa` check cost ~100 us per constant, which made the attribute
    constants of lowered `llm` ops the largest cost of a lowered decode loop.
    """

    @impl(arith.ConstantOp)
    def run_constant(
        self, interpreter: Interpreter, op: arith.ConstantOp, args: PythonValues
    ) -> PythonValues:
        value = op.value
        if isinstance(value, FloatAttr) or (
            isinstance(value, IntegerAttr) and not isinstance(value.type, IndexType)
        ):
            return (value,)
        if isinstance(value, DenseIntOrFPElementsAttr):
            return (_dense_tensor(value, op.result.type),)
        # `@impl` wraps results in an OpImplResult; unwrap the parent's.
        return super().run_constant(interpreter, op, args).values

    @impl_attr(TensorType)
    def tensor_attr_value(
        self, interpreter: Interpreter, attr: Attribute, attr_type: TensorType[Any]
    ) -> ShapedArray[Any]:
        """Tensor arguments written as attributes (`llmir-run --args`)."""
        if not isinstance(attr, DenseIntOrFPElementsAttr):
            raise InterpretationError(
                f"a {attr_type} argument must be a dense<...> attribute, got {attr}"
            )
        return _dense_tensor(attr, attr_type)


def _dense_tensor(
    value: DenseIntOrFPElementsAttr[Any], type_attr: Attribute
) -> ShapedArray[Any]:
    """A `dense<...>` attribute (a splat or every element) as a tensor of
    `type_attr`."""
    import numpy as np

    tensor_type = cast(TensorType[Any], type_attr)
    element_type = tensor_type.element_type
    shape = tensor_type.get_shape()
    values = np.asarray(value.get_values())
    # A splat may come back as one value or already expanded.
    data = values.reshape(shape) if values.size > 1 else np.broadcast_to(values, shape)
    return from_numpy(runtime_calls.to_element_type(data, element_type), element_type)


def register_llmir_implementations(
    interpreter: Interpreter, module: ModuleOp, device: str = "cpu"
) -> list[Any]:
    """Register everything llmir needs on top of xDSL's own implementations:
    the `llm` ops, the lowered runtime calls of `module`, and dense constants.

    Returns the list that collects every cache the run creates, in order."""
    caches: list[Any] = []
    interpreter.register_implementations(LLMFunctions(device, caches))
    interpreter.register_implementations(runtime_functions_for(module, device, caches))
    interpreter.register_implementations(DenseConstantFunctions(), override=True)
    return caches
