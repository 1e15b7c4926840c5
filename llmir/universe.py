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


def _get_llm_kv_cache_stats() -> type[ModulePass]:
    from llmir.transforms.llm_kv_cache_stats import LLMKVCacheStatsPass

    return LLMKVCacheStatsPass


def _get_llm_verify_kv_cache() -> type[ModulePass]:
    from llmir.transforms.llm_verify_kv_cache import LLMVerifyKVCachePass

    return LLMVerifyKVCachePass


def _get_convert_llm_to_func() -> type[ModulePass]:
    from llmir.transforms.convert_llm_to_func import ConvertLLMToFuncPass

    return ConvertLLMToFuncPass


def _get_llm_reserve_slots_per_step() -> type[ModulePass]:
    from llmir.transforms.reserve_slots_per_step import ReserveSlotsPerStepPass

    return ReserveSlotsPerStepPass


def _get_llm_plan_kv_memory() -> type[ModulePass]:
    from llmir.transforms.plan_kv_memory import PlanKVMemoryPass

    return PlanKVMemoryPass


def _get_llm_select_block_size() -> type[ModulePass]:
    from llmir.transforms.select_block_size import SelectBlockSizePass

    return SelectBlockSizePass


def _get_llm_quantize_kv() -> type[ModulePass]:
    from llmir.transforms.quantize_kv import QuantizeKVPass

    return QuantizeKVPass


def _all_passes() -> dict[str, Callable[[], type[ModulePass]]]:
    return {
        "convert-llm-to-func": _get_convert_llm_to_func,
        "llm-kv-cache-stats": _get_llm_kv_cache_stats,
        "llm-plan-kv-memory": _get_llm_plan_kv_memory,
        "llm-quantize-kv": _get_llm_quantize_kv,
        "llm-reserve-slots-per-step": _get_llm_reserve_slots_per_step,
        "llm-select-block-size": _get_llm_select_block_size,
        "llm-verify-kv-cache": _get_llm_verify_kv_cache,
    }


LLMIR_UNIVERSE = Universe(all_dialects=_all_dialects(), all_passes=_all_passes())
