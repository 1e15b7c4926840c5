"""The llmir `Universe`: how xdsl-opt discovers our dialect and passes.

This module is imported by every `xdsl-opt` invocation in an environment
where llmir is installed, so it must stay light: only lazy factories here,
never an import of numba or of the runtime.
"""

from __future__ import annotations

from collections.abc import Callable

from xdsl.ir import Dialect
from xdsl.passes import ModulePass
from xdsl.universe import Universe


def _get_llm_dialect() -> Dialect:
    from llmir.dialects.llm import LLM

    return LLM


def _all_dialects() -> dict[str, Callable[[], Dialect]]:
    return {"llm": _get_llm_dialect}


def _all_passes() -> dict[str, Callable[[], type[ModulePass]]]:
    return {}


LLMIR_UNIVERSE = Universe(all_dialects=_all_dialects(), all_passes=_all_passes())
