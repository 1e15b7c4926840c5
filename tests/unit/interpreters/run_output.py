"""llmir-run's stderr as the tests read it: without the compile notices.

A run says on stderr that it is compiling kernels (`CompileNotice`) only when
its process compiles one, which depends on what ran before it in the same
test process and on what the Numba cache already holds.  A test checks the
other lines."""

from __future__ import annotations

from llmir.tools.progress import COMPILED, COMPILING


def stderr_lines(err: str) -> list[str]:
    """The lines of `err` that are not compile notices."""
    return [
        line
        for line in err.strip().splitlines()
        if not line.startswith((COMPILING, COMPILED))
    ]
