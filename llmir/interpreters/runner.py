"""Run llm IR from Python: parse (or take) a module, optionally apply passes,
and call one of its functions on numpy arrays.

    from llmir.interpreters.runner import run_function
    outputs = run_function(open("examples/decode.mlir").read(), q, k, v, x)

This is the one driver path: ``llmir-run`` parses its command line and then
calls `execute` like `run_function` does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
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
from xdsl.traits import SymbolTable
from xdsl.universe import Universe

from llmir.errors import ShapeError
from llmir.interpreters.arrays import check_tensor, from_numpy, to_numpy
from llmir.interpreters.llm import register_llmir_implementations
from llmir.interpreters.runtime_calls import CacheFactory, CallContext
from llmir.runtime.geometry import CacheGeometry
from llmir.runtime.options import CacheOptions
from llmir.runtime.protocol import KVCache
from llmir.universe import LLMIR_UNIVERSE


def llmir_context() -> Context:
    """A context with every dialect of the installed universes (xDSL's) and
    ours, also when llmir runs from a checkout that is not installed (no
    entry point to discover it by)."""
    ctx = Context()
    for name, factory in _dialects().items():
        ctx.register_dialect(name, factory)
    return ctx


def _dialects() -> dict[str, Any]:
    return {**Universe.get_multiverse().all_dialects, **LLMIR_UNIVERSE.all_dialects}


def all_passes() -> dict[str, Any]:
    """Every pass of the installed universes and ours."""
    return {**Universe.get_multiverse().all_passes, **LLMIR_UNIVERSE.all_passes}


def parse_module(
    source: str, ctx: Context | None = None, name: str = "<input>"
) -> ModuleOp:
    module = Parser(ctx or llmir_context(), source, name).parse_module()
    module.verify()
    return module


def apply_passes(module: ModuleOp, pipeline: str, ctx: Context | None = None) -> None:
    """Apply an xdsl-opt style pass pipeline (e.g. "convert-llm-to-func")."""
    passes = PassPipeline.parse_spec(all_passes(), pipeline)
    passes.apply(ctx or llmir_context(), module)
    module.verify()


def paged_caches(device: str = "cpu", swap_dir: str | None = None) -> CacheFactory:
    """Caches of a run: `PagedKVCache`s on `device` (swap tiers, where the
    program asks for them, in `swap_dir`)."""
    from llmir.runtime.kv_cache import PagedKVCache

    def create(
        geometry: CacheGeometry, num_blocks: int, options: CacheOptions
    ) -> KVCache:
        return PagedKVCache.from_geometry(
            geometry, num_blocks, device=device, options=options, swap_dir=swap_dir
        )

    return create


def sharded_caches(
    shards: int, shard_by: str = "heads", device: str = "cpu"
) -> CacheFactory:
    """Caches of a run: `llmir.distributed.ShardedKVCache`s of `shards`
    shards in Ray actors (the IR is unchanged: the type stays the whole
    cache's)."""
    from llmir.distributed.cache import ShardedKVCache

    def create(
        geometry: CacheGeometry, num_blocks: int, options: CacheOptions
    ) -> KVCache:
        return ShardedKVCache.for_geometry(
            geometry,
            num_blocks,
            shards=shards,
            shard_by=shard_by,
            device=device,
            enable_prefix_caching=options.prefix_caching,
            eviction=options.eviction_name,
            swap_blocks=options.swap_blocks,
            window_tokens=options.window_tokens,
            sink_tokens=options.sink_tokens,
            heavy_hitter_blocks=options.heavy_hitter_blocks,
            heavy_hitter_score=options.heavy_hitter_score,
        )

    return create


def reference_caches() -> CacheFactory:
    """Caches of a run: the dense float64 `DenseReferenceCache`."""
    from llmir.testing.dense_cache import DenseReferenceCache

    def create(
        geometry: CacheGeometry, num_blocks: int, options: CacheOptions
    ) -> KVCache:
        return DenseReferenceCache.from_geometry(geometry, num_blocks, options)

    return create


def make_interpreter(
    module: ModuleOp,
    create_cache: CacheFactory | None = None,
    ctx: Context | None = None,
    index_bitwidth: int = 64,
) -> tuple[Interpreter, CallContext]:
    """An interpreter for `module` with xDSL's and llmir's implementations,
    and the context that collects the caches it creates."""
    interpreter = Interpreter(module, index_bitwidth=index_bitwidth)  # pyright: ignore[reportArgumentType]
    register_implementations(interpreter, ctx or llmir_context())
    context = CallContext(create_cache or paged_caches())
    register_llmir_implementations(interpreter, context)
    return interpreter, context


@dataclass(frozen=True)
class Execution:
    """The outcome of one call: interpreter results, the caches it created
    (in order), and the wall time of the call itself."""

    results: tuple[Any, ...]
    caches: list[KVCache]
    seconds: float


def entry_function(module: ModuleOp, symbol: str) -> func.FuncOp | None:
    """The function `symbol` with a body, or None."""
    entry = SymbolTable.lookup_symbol(module, symbol)
    if not isinstance(entry, func.FuncOp) or entry.is_declaration:
        return None
    return entry


def execute(
    module: ModuleOp,
    entry: func.FuncOp,
    args: Sequence[Any],
    create_cache: CacheFactory | None = None,
    *,
    ctx: Context | None = None,
    listeners: Sequence[Interpreter.Listener] = (),
    index_bitwidth: int = 64,
) -> Execution:
    """Call `entry` of `module` on interpreter values `args`."""
    interpreter, context = make_interpreter(module, create_cache, ctx, index_bitwidth)
    interpreter.listeners = (*interpreter.listeners, *listeners)
    start = time.perf_counter()
    results = interpreter.call_op(entry, tuple(args))
    return Execution(tuple(results), context.caches, time.perf_counter() - start)


def interpreter_value(value: Any, type_attr: Any, what: str) -> Any:
    """A numpy array (or Python int) as the interpreter value of `type_attr`,
    checked against it."""
    if isinstance(type_attr, TensorType):
        tensor_type = cast(TensorType[Any], type_attr)
        array = np.asarray(value)
        check_tensor(array, tensor_type, what)
        return from_numpy(array, tensor_type.element_type)
    if isinstance(type_attr, IntegerType):
        return IntegerAttr(int(value), type_attr)
    return value


def python_value(value: Any) -> Any:
    """An interpreter result as numpy (a copy), a Python number, or the
    runtime object (a cache)."""
    if isinstance(value, ShapedArray):
        return to_numpy(cast(ShapedArray[Any], value)).copy()
    if isinstance(value, IntegerAttr):
        return cast(IntegerAttr[Any], value).value.data
    return value


def run_function(
    module: ModuleOp | str,
    *args: npt.ArrayLike,
    symbol: str = "main",
    passes: str = "",
    device: str = "cpu",
    create_cache: CacheFactory | None = None,
) -> list[Any]:
    """Call function `symbol` of `module` on numpy arguments, with its caches
    on `device` (or made by `create_cache`).

    Tensor results come back as numpy arrays (copies), scalars as Python
    numbers, caches as their runtime objects.
    """
    ctx = llmir_context()
    if isinstance(module, str):
        module = parse_module(module, ctx)
    if passes:
        apply_passes(module, passes, ctx)
    entry = entry_function(module, symbol)
    if entry is None:
        raise ShapeError(f"no function @{symbol} with a body in the module")
    input_types = entry.function_type.inputs.data
    if len(args) != len(input_types):
        raise ShapeError(
            f"@{symbol} takes {len(input_types)} arguments, {len(args)} were given"
        )
    values = [
        interpreter_value(arg, type_attr, f"argument {index} of @{symbol}")
        for index, (arg, type_attr) in enumerate(zip(args, input_types, strict=True))
    ]
    run = execute(module, entry, values, create_cache or paged_caches(device), ctx=ctx)
    return [python_value(r) for r in run.results]
