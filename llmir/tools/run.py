"""`llmir-run`: run a function of an `.mlir` file on the llmir runtime.

Stock `xdsl-run` registers xDSL's own interpreter functions only; this runner
is an `xDSLRunMain` whose `register_implementations` adds llmir's (the `llm`
ops, the lowered `llmir_*` runtime calls, dense tensor constants), and whose
arguments let a user actually feed tensors in:

    llmir-run prog.mlir --random-args 0                 # seeded random inputs
    llmir-run prog.mlir --input q.npy --input kv.npz    # inputs from files
    llmir-run prog.mlir -p convert-llm-to-func          # run the lowered form
    llmir-run prog.mlir --check                         # compare against the
                                                        # dense numpy reference
Bad input (a missing function, a wrong argument count, shape or dtype, an
unreadable file, invalid IR, or a runtime error) exits with status 2 and one
line on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    DenseIntOrFPElementsAttr,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    TensorType,
)
from xdsl.interpreter import Interpreter
from xdsl.interpreters.shaped_array import ShapedArray
from xdsl.ir import Attribute, Operation
from xdsl.parser import Parser
from xdsl.passes import PassPipeline
from xdsl.tools.xdsl_run import xDSLRunMain
from xdsl.utils.exceptions import (
    DiagnosticException,
    InterpretationError,
    ParseError,
    VerifyException,
)

from llmir import abi
from llmir.dialects import llm
from llmir.dialects.llm_type import PagedKVCacheType
from llmir.errors import LLMIRError
from llmir.interpreters.arrays import check_tensor, from_numpy, numpy_dtype_for
from llmir.interpreters.runner import (
    all_passes,
    entry_function,
    execute,
    llmir_context,
    paged_caches,
    python_value,
    reference_caches,
)
from llmir.interpreters.xdsl_extras import dense_tensor
from llmir.runtime.backend import DEVICES
from llmir.runtime.dtypes import element_type_of_ir

EXIT_USAGE = 2


class RunError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


class LLMIRRunMain(xDSLRunMain):
    """xdsl-run with llmir's interpreter functions and tensor inputs."""

    def __init__(self, args: Sequence[str] | None = None) -> None:
        super().__init__(description="Run llm IR on the llmir runtime", args=args)

    def register_all_dialects(self) -> None:
        # Ours too when llmir runs from a checkout, without its entry point.
        self.ctx = llmir_context()

    def register_all_arguments(self, arg_parser: argparse.ArgumentParser) -> None:
        super().register_all_arguments(arg_parser)
        arg_parser.add_argument(
            "-p",
            "--passes",
            default="",
            help="pass pipeline to apply before running, e.g. convert-llm-to-func",
        )
        arg_parser.add_argument(
            "--input",
            action="append",
            default=[],
            metavar="FILE",
            help="tensor arguments from a .npy file (one argument) or a .npz "
            "file (its arrays in order, or named arg0, arg1...); repeatable",
        )
        arg_parser.add_argument(
            "--random-args",
            type=int,
            metavar="SEED",
            help="fill the remaining tensor arguments with seeded random values "
            "(standard normal floats; integers in [0, 8))",
        )
        arg_parser.add_argument(
            "--device",
            choices=DEVICES,
            default="cpu",
            help="where the KV cache and kernels live (default: cpu)",
        )
        arg_parser.add_argument(
            "--output", metavar="FILE.npz", help="save the results as result0..."
        )
        arg_parser.add_argument(
            "--stats", action="store_true", help="print KV cache statistics"
        )
        arg_parser.add_argument(
            "--check",
            action="store_true",
            help="also run on the dense float64 reference cache and compare "
            "float results (tolerance 1e-5 for f32 caches, 1e-3 for f16/bf16)",
        )
        arg_parser.add_argument(
            "--print-ir",
            action="store_true",
            help="print the module after the pass pipeline",
        )
        arg_parser.add_argument(
            "--progress",
            action="store_true",
            help="report progress on stderr (attention calls done, time)",
        )

    # -- pieces -----------------------------------------------------------------

    def _parse_module(self) -> ModuleOp:
        try:
            stream, extension = self.get_input_stream()
        except OSError as e:
            raise RunError(f"cannot read {self.args.input_file}: {e.strerror}") from e
        try:
            module = self.parse_chunk(stream, extension)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
        if module is None:
            raise RunError("the input holds no module")
        module.verify()
        if self.args.passes:
            available = all_passes()
            try:
                pipeline = PassPipeline.parse_spec(available, self.args.passes)
            except ValueError as e:
                raise RunError(str(e)) from e
            pipeline.apply(self.ctx, module)
            module.verify()
        return module

    def _entry(self, module: ModuleOp) -> func.FuncOp:
        entry = entry_function(module, self.args.symbol)
        if entry is None:
            raise RunError(f"no function @{self.args.symbol} with a body in the module")
        return entry

    def _arguments(self, entry: func.FuncOp) -> tuple[Any, ...]:
        """Arguments in order: those of `--args` (xDSL attribute syntax, as
        xdsl-run takes them), then the `--input` arrays, then random ones."""
        types = list(entry.function_type.inputs.data)
        attributes = self._attribute_arguments()
        arrays = _load_inputs(self.args.input)
        given = len(attributes) + len(arrays)
        if given > len(types):
            raise RunError(
                f"@{entry.sym_name.data} takes {len(types)} arguments, "
                f"{given} were given"
            )
        rng = (
            np.random.default_rng(self.args.random_args)
            if self.args.random_args is not None
            else None
        )
        values: list[Any] = []
        for index, type_attr in enumerate(types):
            what = f"argument {index} of @{entry.sym_name.data}"
            if index < len(attributes):
                values.append(_attribute_value(attributes[index], type_attr, what))
            elif index < given:
                array = arrays[index - len(attributes)]
                values.append(_argument_value(array, type_attr, what))
            elif rng is not None:
                values.append(_random_value(rng, type_attr, what))
            else:
                raise RunError(
                    f"@{entry.sym_name.data} takes {len(types)} arguments, "
                    f"{given} were given (use --input or --random-args)"
                )
        return tuple(values)

    def _attribute_arguments(self) -> list[Attribute]:
        if not self.args.args:
            return []
        parser = Parser(self.ctx, self.args.args, "args")
        parsed = parser.parse_optional_undelimited_comma_separated_list(
            parser.parse_optional_attribute, parser.parse_attribute
        )
        return list(parsed or [])

    def run(self) -> None:
        module = self._parse_module()
        if self.args.print_ir:
            print(module)
        entry = self._entry(module)
        args = self._arguments(entry)
        listeners = (_Progress(),) if self.args.progress else ()
        run = execute(
            module,
            entry,
            args,
            paged_caches(self.args.device),
            ctx=self.ctx,
            listeners=listeners,
            index_bitwidth=self.args.index_bitwidth,
        )
        arrays = [_result_array(r) for r in run.results]
        for index, array in enumerate(arrays):
            print(f"result{index}: {_describe(array)}")
            if self.args.verbose and array is not None:
                print(np.array2string(array, precision=4, threshold=10_000))
        print(f"time: {run.seconds * 1e3:.1f} ms")
        if self.args.stats:
            for index, cache in enumerate(run.caches):
                print(f"cache{index}: {cache.stats()}")
        if self.args.output:
            named = {f"result{i}": a for i, a in enumerate(arrays) if a is not None}
            np.savez(self.args.output, **cast(dict[str, Any], named))
            print(f"saved {len(named)} results to {self.args.output}")
        if self.args.check:
            reference = execute(
                module,
                entry,
                args,
                reference_caches(),
                ctx=self.ctx,
                index_bitwidth=self.args.index_bitwidth,
            )
            self._check(arrays, [_result_array(r) for r in reference.results], run)

    def _check(self, arrays: list[Any], reference: list[Any], run: Any) -> None:
        half = any(c.geometry.element_type.is_half for c in run.caches)
        tolerance = 1e-3 if half else 1e-5
        worst = 0.0
        for index, (got, want) in enumerate(zip(arrays, reference, strict=True)):
            if got is None or want is None or got.dtype.kind != "f":
                continue
            got64, want64 = got.astype(np.float64), want.astype(np.float64)
            error = float(np.max(np.abs(got64 - want64), initial=0.0))
            scale = max(float(np.max(np.abs(want64), initial=0.0)), 1.0)
            worst = max(worst, error / scale)
            print(f"check result{index}: max |error| {error:.3g} (scale {scale:.3g})")
        verdict = "PASS" if worst <= tolerance else "FAIL"
        print(
            f"check: {verdict} (worst relative error {worst:.3g}, "
            f"tolerance {tolerance:g})"
        )
        if verdict == "FAIL":
            raise SystemExit(1)


class _Progress(Interpreter.Listener):
    """Interpreter listener printing a progress line per 50 attention calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.start = time.perf_counter()

    def will_interpret_op(self, op: Operation, args: tuple[Any, ...]) -> None:
        function = (
            abi.function_of_call(op.callee.string_value())
            if isinstance(op, func.CallOp)
            else abi.function_of(op)
        )
        if function is None or function.op is not llm.PagedAttentionOp:
            return
        self.calls += 1
        if self.calls % 50 == 0:
            elapsed = time.perf_counter() - self.start
            print(
                f"progress: {self.calls} attention calls, {elapsed:.1f} s",
                file=sys.stderr,
            )


def _load_inputs(paths: list[str]) -> list[npt.NDArray[Any]]:
    arrays: list[npt.NDArray[Any]] = []
    for name in paths:
        path = Path(name)
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RunError(f"cannot read input {name}: {e}") from e
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
            arrays.extend(loaded[k] for k in ordered)
    return arrays


def _attribute_value(attr: Attribute, type_attr: Attribute, what: str) -> Any:
    """An `--args` attribute as the interpreter value of `type_attr`."""
    if isinstance(type_attr, TensorType):
        if not isinstance(attr, DenseIntOrFPElementsAttr):
            raise RunError(f"{what} must be a dense<...> attribute, got {attr}")
        return dense_tensor(attr, type_attr)
    if isinstance(type_attr, IntegerType) and isinstance(attr, IntegerAttr):
        return IntegerAttr(attr.value.data, type_attr)
    raise RunError(f"{what} of type {type_attr} cannot be given as {attr}")


def _argument_value(array: npt.NDArray[Any], type_attr: Attribute, what: str) -> Any:
    if isinstance(type_attr, TensorType):
        tensor_type = cast(TensorType[Any], type_attr)
        element_type = tensor_type.element_type
        cache_element = element_type_of_ir(element_type)
        if cache_element is not None and array.dtype == np.float32:
            array = cache_element.to_host(array)
        if array.dtype != numpy_dtype_for(element_type) and array.dtype.kind == (
            numpy_dtype_for(element_type).kind
        ):
            raise RunError(
                f"{what} has dtype {array.dtype}, expected "
                f"{numpy_dtype_for(element_type)} for {tensor_type}"
            )
        try:
            check_tensor(array, tensor_type, what)
        except LLMIRError as e:
            raise RunError(str(e)) from e
        return from_numpy(array, element_type)
    if isinstance(type_attr, IntegerType) and array.ndim == 0:
        return IntegerAttr(int(array), type_attr)
    raise RunError(f"{what} of type {type_attr} cannot be given as an array")


def _random_value(rng: np.random.Generator, type_attr: Attribute, what: str) -> Any:
    if isinstance(type_attr, TensorType):
        tensor_type = cast(TensorType[Any], type_attr)
        shape = tensor_type.get_shape()
        if any(d < 0 for d in shape):
            raise RunError(
                f"{what} has dynamic shape {tensor_type}: give it with --input"
            )
        element_type = tensor_type.element_type
        dtype = numpy_dtype_for(element_type)
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
        raise RunError(f"{what} is a KV cache: create it inside the function")
    raise RunError(f"{what} of type {type_attr} cannot be generated")


def _result_array(value: Any) -> npt.NDArray[Any] | None:
    if isinstance(value, ShapedArray | IntegerAttr):
        return np.asarray(python_value(value))
    if isinstance(value, FloatAttr):
        return np.asarray(value.value.data)
    return None


def _describe(array: npt.NDArray[Any] | None) -> str:
    if array is None:
        return "(a KV cache)"
    flat = array.reshape(-1)
    head = np.array2string(flat[:6], precision=4, separator=", ")
    more = ", ..." if flat.size > 6 else ""
    return f"{array.dtype}{list(array.shape)} {head[:-1]}{more}]"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        runner = LLMIRRunMain(argv)
        runner.run()
    except RunError as e:
        print(f"llmir-run: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (
        LLMIRError,
        DiagnosticException,
        InterpretationError,
        ParseError,
        VerifyException,
    ) as e:
        message = str(e).strip().splitlines()
        print(f"llmir-run: error: {message[-1] if message else e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
