"""Intel AMX tiles from Numba: the few LLVM intrinsics a bf16 matrix
product needs, and whether this process may use them.

AMX (Sapphire Rapids and later) adds eight tile registers of up to 16 rows
by 64 bytes and ``tdpbf16ps``, which multiplies a 16 x 32 bfloat16 tile by
a 32 x 16 one into a 16 x 16 float32 tile: 8192 multiply-adds in one
instruction, where an AVX-512 FMA does 16.  A prefill spends its time in
two such products per block (``S = Q K^T`` and ``acc += P V``), which is
where `llmir.runtime.cpu.amx_attention` uses them.

Using the tiles takes three things:

* the CPU's ``amx-tile`` and ``amx-bf16`` features (LLVM's host features,
  the same ones Numba compiles for);
* the kernel's permission: Linux hands out the 8 KiB tile state only to a
  process that asked for it (``arch_prctl(ARCH_REQ_XCOMP_PERM,
  XFEATURE_XTILEDATA)``), once, for all its threads;
* a tile configuration loaded in each thread before its first tile
  instruction (`load_config`; `release` after the last).

`enabled()` says whether all three hold, unless ``LLMIR_CPU_AMX=0`` turns
the tiles off (the kernels then take their AVX-512 path; the tests force
it to check both).  Where the tiles are off, the intrinsics below compile
to nothing: a CPU without AMX cannot select their instructions, and the
kernels only reach them behind a compile-time flag that is then false.

Tile operands are 2-D arrays whose rows are contiguous, addressed by (row,
column); a tile's rows are read ``array.strides[0]`` bytes apart.
"""

from __future__ import annotations

import ctypes
import os
import platform
from functools import cache
from typing import Any

from llvmlite import ir
from numba import types  # pyright: ignore[reportUnknownVariableType]
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from llmir.runtime.cpu.host import host_has

_ARCH_PRCTL = 158  # the x86-64 system call number
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

_I8 = ir.IntType(8)
_I64 = ir.IntType(64)
_PTR = ir.IntType(8).as_pointer()

TILE_ROWS = 16
"""Rows of a full tile."""

TILE_BYTES = 64
"""Bytes of a full tile row."""


def _request_tile_state() -> bool:
    """Ask Linux for the tile state (True: granted, or already held)."""
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


@cache
def available() -> bool:
    """Whether this CPU has AMX bf16 and this process may use it."""
    return host_has("amx-tile", "amx-bf16") and _request_tile_state()


def enabled() -> bool:
    """`available`, unless the environment sets ``LLMIR_CPU_AMX=0``."""
    return os.environ.get("LLMIR_CPU_AMX", "1") != "0" and available()


def _call(builder: Any, name: str, arguments: list[Any]) -> None:
    if not available():
        return  # unreachable where the tiles are off (see the module doc)
    module = builder.module
    function = module.globals.get(name)
    if function is None:
        signature = ir.FunctionType(ir.VoidType(), [a.type for a in arguments])
        function = ir.Function(module, signature, name)
    builder.call(function, arguments)


def _tile_number(tile: Any) -> int | None:
    if not isinstance(tile, types.IntegerLiteral):
        return None
    number = int(tile.literal_value)  # pyright: ignore[reportUnknownArgumentType]
    if not 0 <= number < 8:
        raise TypingError(f"AMX tiles are 0-7, got {number}")
    return number


@intrinsic
def load_config(typingctx: Any, config: Any) -> Any:
    """Load a tile configuration into this thread's tile registers: 64
    bytes, the palette (1) in byte 0, tile t's bytes per row at ``16 + 2t``
    (16-bit) and its rows at ``48 + t``."""
    if not (isinstance(config, types.Array) and config.dtype == types.uint8):
        raise TypingError(f"config must be a uint8 array, got {config}")

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array = context.make_array(signature.args[0])(context, builder, args[0])
        _call(builder, "llvm.x86.ldtilecfg", [builder.bitcast(array.data, _PTR)])
        return context.get_dummy_value()

    return types.void(config), codegen


@intrinsic
def release(typingctx: Any) -> Any:
    """Return this thread's tile registers to their initial state."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        _call(builder, "llvm.x86.tilerelease", [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def zero(typingctx: Any, tile: Any) -> Any:
    """Set every element of `tile` (a literal 0-7) to zero."""
    number = _tile_number(tile)
    if number is None:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        _call(builder, "llvm.x86.tilezero", [ir.Constant(_I8, number)])
        return context.get_dummy_value()

    return types.void(tile), codegen


def _row_address(
    context: Any, builder: Any, array_type: Any, array_value: Any, row: Any, col: Any
) -> tuple[Any, Any]:
    array = context.make_array(array_type)(context, builder, array_value)
    index = [
        context.cast(builder, row[1], row[0], types.intp),
        context.cast(builder, col[1], col[0], types.intp),
    ]
    pointer = cgutils.get_item_pointer(context, builder, array_type, array, index)
    stride = cgutils.unpack_tuple(builder, array.strides)[0]
    return builder.bitcast(pointer, _PTR), builder.sext(stride, _I64)


def _operand_check(array: Any) -> None:
    if not (isinstance(array, types.Array) and array.ndim == 2):
        raise TypingError(f"a tile operand must be a 2-D array, got {array}")


def _memory_intrinsic(name: str, doc: str) -> Any:
    """An intrinsic ``(tile, array, row, col)`` calling `name` (a tile load
    or store) on ``array[row:, col:]``, its rows one array row apart."""

    def typer(typingctx: Any, tile: Any, array: Any, row: Any, col: Any) -> Any:
        number = _tile_number(tile)
        if number is None:
            return None
        _operand_check(array)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            pointer, stride = _row_address(
                context, builder, signature.args[1], args[1],
                (signature.args[2], args[2]), (signature.args[3], args[3]),
            )  # fmt: skip
            _call(builder, name, [ir.Constant(_I8, number), pointer, stride])
            return context.get_dummy_value()

        return types.void(tile, array, row, col), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


load = _memory_intrinsic(
    "llvm.x86.tileloadd64",
    "Load `tile` from ``array[row:, col:]``, its rows one array row apart.",
)
store = _memory_intrinsic(
    "llvm.x86.tilestored64",
    "Store `tile` to ``array[row:, col:]``, its rows one array row apart.",
)


@intrinsic
def dot_bf16(typingctx: Any, c: Any, a: Any, b: Any) -> Any:
    """``c += a @ b`` over bfloat16 pairs (``tdpbf16ps``): `a` is M x 2K
    bf16 (row-major), `b` is K rows of N bf16 pairs (``b[k, n]`` holds the
    multipliers of ``a[m, 2k]`` and ``a[m, 2k + 1]``), `c` M x N float32."""
    numbers = [_tile_number(t) for t in (c, a, b)]
    if None in numbers:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        _call(builder, "llvm.x86.tdpbf16ps", [ir.Constant(_I8, n) for n in numbers])
        return context.get_dummy_value()

    return types.void(c, a, b), codegen
