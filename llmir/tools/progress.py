"""What ``llmir-run`` says on stderr while a program runs: that kernels are
being compiled (the first run only), and, with ``--progress``, how far the
run has got, about once a second."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from numba.core import event
from xdsl.dialects import func, scf
from xdsl.dialects.builtin import IntegerAttr
from xdsl.interpreter import Interpreter
from xdsl.ir import Operation

from llmir import abi

REPORT_EVERY_SECONDS = 1.0

COMPILING = "llmir-run: compiling kernels for "
COMPILED = "llmir-run: compiled "
"""How `CompileNotice`'s two lines begin (tests set them apart from the
rest of stderr: they appear only when the process compiles a kernel)."""


class CompileNotice(event.Listener):
    """Counts the time Numba spends compiling kernels, and says so once when
    the first compile starts (cached kernels load without compiling).

    Use as a context manager around a run; `seconds` is the compile time of
    the outermost compiles (a kernel compiling its helpers counts once).
    """

    def __init__(self, what: str, stream: TextIO | None = None) -> None:
        self.what = what
        self.stream = stream or sys.stderr
        self.seconds = 0.0
        self.compiles = 0
        self._depth = 0
        self._started = 0.0

    def on_start(self, event: event.Event) -> None:
        if self._depth == 0:
            if self.compiles == 0:
                print(
                    f"{COMPILING}{self.what} (first run only: "
                    "Numba keeps them in NUMBA_CACHE_DIR or __pycache__)...",
                    file=self.stream,
                    flush=True,
                )
            self._started = time.perf_counter()
        self._depth += 1

    def on_end(self, event: event.Event) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._started
            self.compiles += 1

    def __enter__(self) -> CompileNotice:
        event.register("numba:compile", self)
        return self

    def __exit__(self, *exc: object) -> None:
        event.unregister("numba:compile", self)
        if self.compiles:
            print(
                f"{COMPILED}{self.compiles} kernel(s) in {self.seconds:.1f} s",
                file=self.stream,
                flush=True,
            )


class Progress(Interpreter.Listener):
    """Reports about once a second: the steps done of the loops running (out
    of their trip counts), the `llm` operations executed, and the time."""

    def __init__(
        self,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.stream = stream or sys.stderr
        self.clock = clock
        self.start = clock()
        self.last_report = self.start
        self.llm_ops = 0
        self.loops: list[list[Any]] = []  # [loop op, steps done, trip count]

    def will_interpret_op(self, op: Operation, args: tuple[Any, ...]) -> None:
        if isinstance(op, scf.ForOp):
            lb, ub, step = (_number(a) for a in args[:3])
            trips = max(0, -(-(ub - lb) // step)) if step > 0 else 0
            self.loops.append([op, 0, trips])
        elif _is_llm(op):
            self.llm_ops += 1
        self._maybe_report()

    def did_interpret_op(self, op: Operation, results: tuple[Any, ...]) -> None:
        if isinstance(op, scf.YieldOp) and self.loops:
            if op.parent_op() is self.loops[-1][0]:
                self.loops[-1][1] += 1
        elif isinstance(op, scf.ForOp) and self.loops and self.loops[-1][0] is op:
            self.loops.pop()

    def _maybe_report(self) -> None:
        now = self.clock()
        if now - self.last_report < REPORT_EVERY_SECONDS:
            return
        self.last_report = now
        steps = ", ".join(f"step {done}/{trips}" for _, done, trips in self.loops)
        where = f"{steps}, " if steps else ""
        print(
            f"llmir-run: progress: {where}{self.llm_ops} llm ops, "
            f"{now - self.start:.1f} s",
            file=self.stream,
            flush=True,
        )


def _number(value: Any) -> int:
    return int(value.value.data) if isinstance(value, IntegerAttr) else int(value)


def _is_llm(op: Operation) -> bool:
    if isinstance(op, func.CallOp):
        return abi.function_of_call(op.callee.string_value()) is not None
    return abi.function_of(op) is not None
