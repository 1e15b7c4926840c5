"""Run llm IR from Python: parse (or take) a module, optionally apply passes,
and call one of its functions on numpy arrays.

    from llmir.interpreters.runner import run_function
    outputs = run_function(open("examples/decode.mlir").read(), q, k, v, x)

This is the library form of `llmir-run`; both register the same interpreter
functions (`register_llmir_implementations`).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, IntegerType, ModuleOp, TensorType
from xdsl.interpreter import Interpreter
from xdsl.interpreters import register_implementations
from xdsl.interpreters.shaped_array import ShapedArray
from xdsl.parser import Parser
from xdsl.passes import PassPipeline
from xdsl.universe import Universe

from llmir.errors import ShapeError
from llmir.interpreters.arrays import check_tensor, from_numpy, to_numpy
from llmir.interpreters.llm import register_llmir_implementations


def llmir_context() -> Context:
    """A context with every dialect of the installed universes (xDSL's and ours)."""
    ctx = Context()
    for name, factory in Universe.get_multiverse().all_dialects.items():
        ctx.register_dialect(name, factory)
    return ctx


def parse_module(source: str, ctx: Context | None = None) -> ModuleOp:
    module = Parser(ctx or llmir_context(), source).parse_module()
    module.verify()
    return module


def apply_passes(module: ModuleOp, pipeline: str, ctx: Context | None = None) -> None:
    """Apply an xdsl-opt style pass pipeline (e.g. "convert-llm-to-func")."""
    passes = PassPipeline.parse_spec(Universe.get_multiverse().all_passes, pipeline)
    passes.apply(ctx or llmir_context(), module)
    module.verify()


def make_interpreter(
    module: ModuleOp, device: str = "cpu", ctx: Context | None = None
) -> Interpreter:
    """An interpreter for `module` with xDSL's and llmir's implementations."""
    interpreter = Interpreter(module)
    register_implementations(interpreter, ctx or llmir_context())
    register_llmir_implementations(interpreter, module, device)
    return interpreter


def run_function(
    module: ModuleOp | str,
    *args: npt.ArrayLike,
    symbol: str = "main",
    passes: str = "",
    device: str = "cpu",
) -> list[Any]:
    """Call function `symbol` of `module` on numpy arguments.

    Tensor results come back as numpy arrays (copies), scalars as Python
    numbers, caches as their runtime objects.
    """
    ctx = llmir_context()
    if isinstance(module, str):
        module = parse_module(module, ctx)
    if passes:
        apply_passes(module, passes, ctx)
    interpreter = make_interpreter(module, device, ctx)
    entry = interpreter.get_op_for_symbol(symbol)
    assert isinstance(entry, func.FuncOp)
    input_types = entry.function_type.inputs.data
    if len(args) != len(input_types):
        raise ShapeError(
            f"@{symbol} takes {len(input_types)} arguments, {len(args)} were given"
        )
    values: list[Any] = []
    for index, (arg, type_attr) in enumerate(zip(args, input_types, strict=True)):
        if isinstance(type_attr, TensorType):
            tensor_type = cast(TensorType[Any], type_attr)
            array = np.asarray(arg)
            check_tensor(array, tensor_type, f"argument {index} of @{symbol}")
            values.append(from_numpy(array, tensor_type.element_type))
        elif isinstance(type_attr, IntegerType):
            values.append(IntegerAttr(int(cast(Any, arg)), type_attr))
        else:
            values.append(arg)
    results = interpreter.call_op(entry, tuple(values))
    return [_from_value(r) for r in results]


def _from_value(value: Any) -> Any:
    if isinstance(value, ShapedArray):
        return to_numpy(cast(ShapedArray[Any], value)).copy()
    if isinstance(value, IntegerAttr):
        return cast(IntegerAttr[Any], value).value.data
    return value
