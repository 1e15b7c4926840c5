"""`llmir-run`: run a function of an `.mlir` file on the llmir runtime.

    llmir-run prog.mlir --random-args 0                 # seeded random inputs
    llmir-run prog.mlir --input q.npy --input kv.npz    # inputs from files
    llmir-run prog.mlir -p convert-llm-to-func          # run the lowered form
    llmir-run prog.mlir --check                         # against the dense
                                                        # float64 reference

A thin command line over `llmir.interpreters.runner`, the one driver path.
Every bad input (an unreadable or non-UTF-8 file, invalid IR, a bad pass
pipeline, wrong arguments, an output it cannot write, a program that uses a
superseded cache version, a pool larger than memory, any runtime error)
ends with exit status 2 and one line on stderr, ``llmir-run: error: ...``;
a parse error's line gives ``file:line:col`` and is followed by the source
line with a caret.  No input makes it print a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
from xdsl.dialects import func
from xdsl.dialects.builtin import FloatAttr, IntegerAttr, ModuleOp
from xdsl.interpreters.shaped_array import ShapedArray
from xdsl.parser import Parser
from xdsl.passes import PassPipeline
from xdsl.utils.exceptions import (
    ArgSpecParseError,
    DiagnosticException,
    InterpretationError,
    ParseError,
    PassFailedException,
    VerifyException,
)

import llmir
from llmir import abi
from llmir.dialects import llm
from llmir.errors import LLMIRError
from llmir.interpreters.runner import (
    Execution,
    all_passes,
    entry_function,
    execute,
    llmir_context,
    paged_caches,
    python_value,
    reference_caches,
    sharded_caches,
)
from llmir.runtime.backend import DEVICES
from llmir.tools.inputs import ArgumentError, function_arguments
from llmir.tools.progress import CompileNotice, Progress
from llmir.transforms.llm_verify_kv_cache import check_cache_versions
from llmir.universe import LLMIR_UNIVERSE

EXIT_ERROR = 2
EXIT_CHECK_FAILED = 1
EXIT_INTERNAL = 3

EXAMPLES = """\
examples:
  llmir-run examples/decode.mlir --random-args 0 --stats --check
  llmir-run prog.mlir -p convert-llm-to-func --random-args 1
  llmir-run prog.mlir --input q.npy --input kv.npz --output out.npz
  llmir-run prog.mlir --symbol step --args "dense<[0, 1]> : tensor<2xi32>"
"""


class RunError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"llmir-run: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seed must be an integer, got {text!r}"
        ) from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"seed must be >= 0, got {seed}")
    return seed


def build_parser() -> argparse.ArgumentParser:
    passes = "\n".join(f"  {name}" for name in sorted(LLMIR_UNIVERSE.all_passes))
    parser = _Parser(
        prog="llmir-run",
        description="Run a function of llm IR on the llmir runtime "
        "(paged KV cache, Numba CPU kernels, numba.cuda GPU kernels).",
        epilog=f"llm passes (for -p, with any xDSL pass):\n{passes}\n\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("input_file", nargs="?", help="the .mlir file (default: stdin)")
    add("-p", "--passes", default="", help="pass pipeline to apply before running")
    add("--symbol", default="main", help="the function to call (default: main)")
    add(
        "--args",
        default="",
        help="leading arguments as xDSL attributes, comma separated",
    )
    add(
        "--input",
        action="append",
        default=[],
        metavar="FILE",
        help="tensor arguments from a .npy file (one argument) or a .npz file "
        "(its arrays in order, or named arg0, arg1...); repeatable",
    )
    add(
        "--random-args",
        type=_seed,
        metavar="SEED",
        help="fill the remaining tensor arguments with seeded random values "
        "(standard normal floats; integers in [0, 8))",
    )
    add(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the KV cache and kernels live (default: cpu)",
    )
    add(
        "--shards",
        type=int,
        default=1,
        metavar="N",
        help="cut each cache into N shards in Ray actors (llmir[distributed]); "
        "default 1: no sharding",
    )
    add(
        "--shard-by",
        choices=("heads", "layers"),
        default="heads",
        help="cut by kv heads (tensor parallel) or layers (pipeline parallel)",
    )
    add(
        "--swap-dir",
        metavar="DIR",
        help="where CPU caches keep their swap tier files (llm.create_kv_cache "
        "{swap_blocks}); default: the temporary directory",
    )
    add("--output", metavar="FILE", help="save the results as FILE.npz")
    add("--stats", action="store_true", help="print KV cache statistics")
    add(
        "--check",
        action="store_true",
        help="also run on the dense float64 reference cache and compare float "
        "results (tolerance 1e-5 for f32 caches, 1e-3 for f16/bf16; for i8/i4 "
        "the relative RMS error against the unquantized run, bound 2e-2/1.6e-1)",
    )
    add(
        "--no-verify",
        action="store_true",
        help="skip the check that no cache version is used after it was "
        "superseded (llm-verify-kv-cache)",
    )
    add("--print-ir", action="store_true", help="print the module after the passes")
    add(
        "--progress",
        action="store_true",
        help="report progress on stderr about once a second",
    )
    add("--verbose", action="store_true", help="print the results in full")
    add(
        "--index-bitwidth",
        type=int,
        choices=(32, 64),
        default=64,
        help="bit width of the index type (default: 64)",
    )
    add("--version", action="version", version=f"llmir-run {llmir.__version__}")
    return parser


# -- stages ----------------------------------------------------------------------


def read_source(path: str | None) -> tuple[str, str]:
    """(text, name) of the input file, or of stdin."""
    name = path or "<stdin>"
    try:
        data = sys.stdin.buffer.read() if path is None else Path(path).read_bytes()
    except OSError as e:
        raise RunError(f"cannot read {name}: {e.strerror or e}") from e
    try:
        return data.decode("utf-8"), name
    except UnicodeDecodeError as e:
        raise RunError(
            f"{name} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start}"
        ) from e


def parse_source(text: str, name: str, ctx: Any) -> ModuleOp:
    module = Parser(ctx, text, name).parse_module()
    module.verify()
    return module


def apply_pipeline(module: ModuleOp, pipeline: str, ctx: Any) -> None:
    try:
        passes = PassPipeline.parse_spec(all_passes(), pipeline)
    except ArgSpecParseError as e:
        # "...specification:\n<where>\n<text>\n<caret>\n<message>"
        lines = [line.strip() for line in str(e.args[0]).splitlines() if line.strip()]
        column = lines[1].rsplit(":", 1)[-1]
        raise RunError(f"-p {pipeline!r}: {lines[-1]} (at column {column})") from e
    except (ValueError, KeyError) as e:
        raise RunError(f"-p {pipeline!r}: {_first_line(str(e))}") from e
    passes.apply(ctx, module)
    module.verify()


def check_output_path(output: str) -> Path:
    """The file `--output` will write (numpy adds .npz), checked now, before
    the run, so that a bad path does not cost a whole run."""
    path = Path(output if output.endswith(".npz") else output + ".npz")
    if path.is_dir():
        raise RunError(f"--output {output}: {path} is a directory")
    folder = path.parent
    if not folder.is_dir():
        raise RunError(f"--output {output}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        raise RunError(f"--output {output}: {path} is not writable")
    return path


def run(options: argparse.Namespace) -> int:
    ctx = llmir_context()
    text, name = read_source(options.input_file)
    module = parse_source(text, name, ctx)
    if options.check:
        _check_is_possible(module)
    if options.passes:
        apply_pipeline(module, options.passes, ctx)
    if not options.no_verify:
        check_cache_versions(module)
    if options.print_ir:
        print(module)
    output = check_output_path(options.output) if options.output else None
    entry = entry_function(module, options.symbol)
    if entry is None:
        raise RunError(f"no function @{options.symbol} with a body in {name}")
    args = function_arguments(
        ctx, entry, options.args, options.input, options.random_args
    )
    listeners = (Progress(),) if options.progress else ()
    if options.shards < 1:
        raise RunError(f"--shards must be at least 1, got {options.shards}")
    caches = (
        sharded_caches(options.shards, options.shard_by, options.device)
        if options.shards > 1
        else paged_caches(options.device, options.swap_dir)
    )
    with CompileNotice(_element_types(module)) as compiling:
        execution = execute(
            module,
            entry,
            args,
            caches,
            ctx=ctx,
            listeners=listeners,
            index_bitwidth=options.index_bitwidth,
        )
    arrays = [_result_array(r) for r in execution.results]
    for index, array in enumerate(arrays):
        print(f"result{index}: {_describe(array)}")
        if options.verbose and array is not None:
            print(np.array2string(array, precision=4, threshold=10_000))
    run_seconds = max(execution.seconds - compiling.seconds, 0.0)
    compile_note = (
        f" (+ {compiling.seconds:.1f} s compiling kernels)"
        if compiling.compiles
        else ""
    )
    print(f"time: {run_seconds * 1e3:.1f} ms{compile_note}")
    if options.stats:
        for index, cache in enumerate(execution.caches):
            report = cache.stats().report().replace("\n", "\n  ")
            print(f"cache{index}: {cache.geometry.describe()}\n  {report}")
    if output is not None:
        named = {f"result{i}": a for i, a in enumerate(arrays) if a is not None}
        try:
            np.savez(output, **named)  # pyright: ignore[reportArgumentType]
        except OSError as e:
            raise RunError(f"cannot write {output}: {e.strerror or e}") from e
        print(f"saved {len(named)} results to {output}")
    if options.check:
        reference = execute(
            module,
            entry,
            args,
            reference_caches(),
            ctx=ctx,
            index_bitwidth=options.index_bitwidth,
        )
        return _check(arrays, [_result_array(r) for r in reference.results], execution)
    return 0


def _check_is_possible(module: ModuleOp) -> None:
    """--check runs the program again on the dense reference, which keeps
    every token: fine for sinks + window pruning (its mask hides what was
    pruned), meaningless for heavy hitters (what goes depends on attention
    masses, so outputs differ by design)."""
    for op in module.walk():
        if isinstance(op, llm.CreateKVCacheOp) and op.heavy_hitter_blocks is not None:
            raise RunError(
                "--check compares with the dense reference, which keeps every "
                "token, but this program's cache prunes heavy hitters "
                f"(heavy_hitter_blocks = {op.heavy_hitter_blocks}): outputs "
                "differ by design; run it without --check"
            )


def _check(arrays: list[Any], reference: list[Any], execution: Execution) -> int:
    """Compare with the dense reference: the largest error relative to the
    largest value, or for a quantized cache (whose reference is the
    unquantized run) the relative RMS error against its scheme's bound."""
    elements = [c.geometry.element_type for c in execution.caches]
    bounds = [e.quant.error_bound for e in elements if e.quant is not None]
    half = any(e.is_half for e in elements)
    tolerance = max(bounds) if bounds else (1e-3 if half else 1e-5)
    measure = "relative RMS error" if bounds else "relative error"
    worst = 0.0
    for index, (got, want) in enumerate(zip(arrays, reference, strict=True)):
        if got is None or want is None or got.dtype.kind != "f":
            continue
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        error = float(np.max(np.abs(got64 - want64), initial=0.0))
        scale = max(float(np.max(np.abs(want64), initial=0.0)), 1.0)
        if bounds:
            norm = max(float(np.sqrt(np.sum(want64**2))), 1e-30)
            worst = max(worst, float(np.sqrt(np.sum((got64 - want64) ** 2))) / norm)
        else:
            worst = max(worst, error / scale)
        print(f"check result{index}: max |error| {error:.3g} (scale {scale:.3g})")
    verdict = "PASS" if worst <= tolerance else "FAIL"
    print(f"check: {verdict} (worst {measure} {worst:.3g}, tolerance {tolerance:g})")
    return 0 if verdict == "PASS" else EXIT_CHECK_FAILED


def _element_types(module: ModuleOp) -> str:
    """The element types of the caches a module creates, for the compile
    notice (from the ops, or from the calls they were lowered to)."""
    names: list[str] = []
    for op in module.walk():
        element = None
        if isinstance(op, llm.CreateKVCacheOp):
            element = op.get_cache_type().cache_element_type
        elif isinstance(op, func.CallOp):
            found = abi.CALLEES.get(op.callee.string_value())
            if found is not None and found[0].op is llm.CreateKVCacheOp:
                element = found[1]
        if element is not None and element.name not in names:
            names.append(element.name)
    return ", ".join(names) or "the program"


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


# -- errors ----------------------------------------------------------------------


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text.strip()


def describe_error(error: BaseException) -> str:
    """The message of an expected failure, for one (or, with a parse
    error's source excerpt, three) line(s) on stderr."""
    if isinstance(error, ParseError):
        where = error.span.get_location()
        excerpt = error.span.print_with_context().splitlines()[1:3]
        return "\n".join([f"{where}: {error.msg}", *excerpt])
    if isinstance(error, RecursionError):
        return (
            "the program nests too deeply or calls itself without end "
            f"(Python's recursion limit is {sys.getrecursionlimit()})"
        )
    if isinstance(error, MemoryError) and not isinstance(error, LLMIRError):
        return f"out of memory: {_first_line(str(error)) or 'an allocation failed'}"
    if isinstance(error, InterpretationError):
        return f"cannot run the program: {_first_line(str(error))}"
    if isinstance(error, PassFailedException):
        return f"pass failed: {_first_line(str(error))}"
    if isinstance(error, VerifyException | DiagnosticException):
        return f"invalid IR: {_first_line(str(error))}"
    return _first_line(str(error)) or type(error).__name__


EXPECTED = (
    RunError,
    ArgumentError,
    LLMIRError,
    ParseError,
    VerifyException,
    DiagnosticException,
    InterpretationError,
    RecursionError,
    MemoryError,
)


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        return run(options)
    except EXPECTED as e:
        print(f"llmir-run: error: {describe_error(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("llmir-run: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`llmir-run ... | head`): nothing more to say.
        # Point stdout at devnull so the interpreter's final flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:
        # Not a bad input: a bug in llmir.  Still one line, unless asked.
        if os.environ.get("LLMIR_TRACEBACK"):
            raise
        print(
            f"llmir-run: internal error: {type(e).__name__}: {_first_line(str(e))} "
            "(a bug in llmir; LLMIR_TRACEBACK=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
