"""Interpreter functions llm programs need from xDSL's own dialects, which
xDSL's interpreter leaves out or runs slowly:

* `arith.constant dense<...> : tensor<...>` (constant sequence ids, say),
  and tensor arguments written as attributes (``llmir-run --args``);
* `tensor.cast`, which the lowered form uses to pass static tensors to
  runtime functions declared with dynamic shapes;
* scalar `arith.constant`s answered without xDSL's generic type check, which
  cost ~100 us per constant.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from xdsl.dialects import arith, tensor
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    DenseIntOrFPElementsAttr,
    FloatAttr,
    IndexType,
    IntegerAttr,
    TensorType,
)
from xdsl.interpreter import (
    Interpreter,
    PythonValues,
    impl,
    impl_attr,
    register_impls,
)
from xdsl.interpreters.arith import ArithFunctions
from xdsl.interpreters.shaped_array import ShapedArray
from xdsl.ir import Attribute
from xdsl.utils.exceptions import InterpretationError

from llmir.interpreters.arrays import from_numpy, numpy_dtype_for
from llmir.runtime.dtypes import element_type_of_ir


@register_impls
class XDSLExtraFunctions(ArithFunctions):
    """xDSL's arith functions plus the additions of the module docstring.
    Register with ``override=True``."""

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
            return (dense_tensor(value, op.result.type),)
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
        return dense_tensor(attr, attr_type)

    @impl(tensor.CastOp)
    def run_cast(
        self, interpreter: Interpreter, op: tensor.CastOp, args: PythonValues
    ) -> PythonValues:
        (value,) = args
        dest = op.dest.type
        if isinstance(dest, TensorType):
            shape = cast(TensorType[Any], dest).get_shape()
            actual = cast(ShapedArray[Any], value).shape
            if len(shape) != len(actual) or any(
                d not in (DYNAMIC_INDEX, a) for d, a in zip(shape, actual, strict=True)
            ):
                raise InterpretationError(
                    f"tensor.cast of a tensor of shape {list(actual)} to {dest}"
                )
        return (value,)


def dense_tensor(
    value: DenseIntOrFPElementsAttr[Any], type_attr: Attribute
) -> ShapedArray[Any]:
    """A `dense<...>` attribute (a splat or every element) as a tensor of
    `type_attr`."""
    tensor_type = cast(TensorType[Any], type_attr)
    element_type = tensor_type.element_type
    shape = tensor_type.get_shape()
    values = np.asarray(value.get_values())
    # A splat may come back as one value or already expanded.
    data = values.reshape(shape) if values.size > 1 else np.broadcast_to(values, shape)
    cache_element = element_type_of_ir(element_type)
    if cache_element is not None:
        data = cache_element.to_host(data)
    return from_numpy(
        np.ascontiguousarray(data, dtype=numpy_dtype_for(element_type)), element_type
    )
