"""The arguments of a function run by ``llmir-run``: from ``--args``
attributes, ``--input`` files, or seeded random values, each checked against
the function's argument type (and against the memory there is) before
anything runs."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    DenseIntOrFPElementsAttr,
    IntegerAttr,
    IntegerType,
    TensorType,
)
from xdsl.ir import Attribute
from xdsl.parser import Parser
from xdsl.utils.exceptions import ParseError

from llmir import abi
from llmir.dialects.llm_type import PagedKVCacheType
from llmir.errors import LLMIRError
from llmir.interpreters.arrays import check_tensor, from_numpy, numpy_dtype_for
from llmir.interpreters.xdsl_extras import dense_tensor
from llmir.runtime.dtypes import element_type_of_ir
from llmir.runtime.memory import format_bytes, host_memory_bytes


class ArgumentError(Exception):
    """A bad argument of the run: printed as one line, exit status 2."""


def function_arguments(
    ctx: Context,
    entry: func.FuncOp,
    attributes: str,
    inputs: list[str],
    seed: int | None,
) -> tuple[Any, ...]:
    """Interpreter values for every argument of `entry`, in order: those of
    `attributes` (xDSL attribute syntax, as xdsl-run takes them), then the
    arrays of the `inputs` files, then seeded random ones."""
    name = entry.sym_name.data
    types = list(entry.function_type.inputs.data)
    given_attributes = _parse_attributes(ctx, attributes)
    arrays = _load_inputs(inputs)
    given = len(given_attributes) + len(arrays)
    if given > len(types):
        raise ArgumentError(f"@{name} takes {len(types)} arguments, {given} were given")
    rng = np.random.default_rng(seed) if seed is not None else None
    values: list[Any] = []
    for index, type_attr in enumerate(types):
        what = f"argument {index} of @{name}"
        if index < len(given_attributes):
            values.append(_attribute_value(given_attributes[index], type_attr, what))
        elif index < given:
            values.append(
                _array_value(arrays[index - len(given_attributes)], type_attr, what)
            )
        elif rng is not None:
            values.append(_random_value(rng, type_attr, what))
        else:
            raise ArgumentError(
                f"@{name} takes {len(types)} arguments, {given} were given "
                "(use --input or --random-args)"
            )
    return tuple(values)


def _parse_attributes(ctx: Context, text: str) -> list[Attribute]:
    if not text:
        return []
    parser = Parser(ctx, text, "--args")
    try:
        parsed = parser.parse_optional_undelimited_comma_separated_list(
            parser.parse_optional_attribute, parser.parse_attribute
        )
    except ParseError as e:
        raise ArgumentError(f"--args: {e.msg}") from e
    return list(parsed or [])


def _load_inputs(paths: list[str]) -> list[npt.NDArray[Any]]:
    arrays: list[npt.NDArray[Any]] = []
    for name in paths:
        try:
            loaded = np.load(Path(name), allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
            raise ArgumentError(f"cannot read input {name}: {reason}") from e
        if isinstance(loaded, np.ndarray):
            arrays.append(loaded)
            continue
        with loaded:
            keys = list(loaded.keys())
            numbered = sorted(
                (k for k in keys if k.startswith("arg") and k[3:].isdigit()),
                key=lambda k: int(k[3:]),
            )
            ordered = numbered if len(numbered) == len(keys) else keys
            try:
                arrays.extend(loaded[k] for k in ordered)
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                raise ArgumentError(f"cannot read input {name}: {e}") from e
    return arrays


def _attribute_value(attr: Attribute, type_attr: Attribute, what: str) -> Any:
    """An `--args` attribute as the interpreter value of `type_attr`."""
    if isinstance(type_attr, TensorType):
        if not isinstance(attr, DenseIntOrFPElementsAttr):
            raise ArgumentError(f"{what} must be a dense<...> attribute, got {attr}")
        try:
            return dense_tensor(attr, type_attr)
        except ValueError as e:
            raise ArgumentError(f"{what}: {attr} does not fit {type_attr}") from e
    if isinstance(type_attr, IntegerType) and isinstance(attr, IntegerAttr):
        return IntegerAttr(attr.value.data, type_attr)
    raise ArgumentError(f"{what} of type {type_attr} cannot be given as {attr}")


def _array_value(array: npt.NDArray[Any], type_attr: Attribute, what: str) -> Any:
    if isinstance(type_attr, TensorType):
        tensor_type = cast(TensorType[Any], type_attr)
        element_type = tensor_type.element_type
        try:
            expected = numpy_dtype_for(element_type)
        except LLMIRError as e:
            raise ArgumentError(f"{what}: {e}") from e
        cache_element = element_type_of_ir(element_type)
        if cache_element is not None and array.dtype == np.float32:
            array = cache_element.to_host(array)
        try:
            check_tensor(array, tensor_type, what)
        except LLMIRError as e:
            raise ArgumentError(str(e)) from e
        return from_numpy(array.astype(expected, copy=False), element_type)
    if isinstance(type_attr, IntegerType) and array.ndim == 0:
        return IntegerAttr(int(array), type_attr)
    raise ArgumentError(f"{what} of type {type_attr} cannot be given as an array")


def _random_value(rng: np.random.Generator, type_attr: Attribute, what: str) -> Any:
    if isinstance(type_attr, TensorType):
        tensor_type = cast(TensorType[Any], type_attr)
        shape = tensor_type.get_shape()
        if any(d < 0 for d in shape):
            raise ArgumentError(
                f"{what} has dynamic shape {tensor_type}: give it with --input"
            )
        element_type = tensor_type.element_type
        try:
            dtype = numpy_dtype_for(element_type)
        except LLMIRError as e:
            raise ArgumentError(f"{what}: {e}") from e
        # float32 is generated first, then converted: count the larger.
        needed = math.prod(shape) * max(dtype.itemsize, 4)
        available = host_memory_bytes()
        if available and needed > available:
            raise ArgumentError(
                f"{what}, {tensor_type}, would take {format_bytes(needed)}, more "
                f"than the {format_bytes(available)} of this machine's memory"
            )
        cache_element = element_type_of_ir(element_type)
        if isinstance(element_type, IntegerType):
            data: npt.NDArray[Any] = rng.integers(0, 8, size=shape).astype(dtype)
        elif cache_element is not None:
            data = cache_element.to_host(rng.standard_normal(shape, np.float32))
        else:
            data = rng.standard_normal(shape).astype(dtype)
        return from_numpy(data, element_type)
    if isinstance(type_attr, IntegerType):
        return IntegerAttr(int(rng.integers(0, 8)), type_attr)
    if isinstance(type_attr, PagedKVCacheType) or type_attr == abi.HANDLE:
        raise ArgumentError(f"{what} is a KV cache: create it inside the function")
    raise ArgumentError(f"{what} of type {type_attr} cannot be generated")
