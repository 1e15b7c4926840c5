"""The one element-type registry: every layer reads it, and a type it does
not hold is rejected by each of them with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects import func, test
from xdsl.dialects.builtin import (
    Float80Type,
    IntegerType,
    ModuleOp,
    TensorType,
    bf16,
    f16,
    f32,
    f64,
    i16,
    i32,
)
from xdsl.ir import Block, Region
from xdsl.utils.exceptions import PassFailedException, VerifyException

from llmir import PagedKVCache, abi
from llmir.dialects.llm import CreateKVCacheOp, LookupKVOp, PagedKVCacheType
from llmir.errors import DTypeError
from llmir.interpreters.arrays import numpy_dtype_for
from llmir.interpreters.runner import llmir_context
from llmir.runtime.dtypes import (
    BF16,
    ELEMENT_TYPES,
    F16,
    F32,
    element_type,
    element_type_of_ir,
)
from llmir.transforms.convert_llm_to_func import ConvertLLMToFuncPass


def test_entries_are_distinct_and_resolvable() -> None:
    entries = list(ELEMENT_TYPES.values())
    assert len({t.code for t in entries}) == len(entries)
    assert len({t.ir_type for t in entries}) == len(entries)
    for entry in entries:
        assert element_type(entry.name) is entry
        assert element_type(entry.ir_type) is entry
        assert element_type_of_ir(entry.ir_type) is entry
        for alias in entry.aliases:
            assert element_type(alias.upper()) is entry
    assert element_type(np.float16) is F16 and element_type(np.float32) is F32
    assert (element_type_of_ir(f32), element_type_of_ir(bf16)) == (F32, BF16)


def test_interpreter_bridges_through_the_registry() -> None:
    assert numpy_dtype_for(f16) == np.float16
    assert numpy_dtype_for(bf16) == np.uint16  # bit patterns: numpy has no bf16
    assert numpy_dtype_for(i32) == np.int32
    with pytest.raises(DTypeError, match="no numpy representation"):
        numpy_dtype_for(Float80Type())


def test_the_abi_names_a_callee_per_registered_type() -> None:
    names = {name for name, _, _ in abi.all_callees()}
    for entry in ELEMENT_TYPES.values():
        assert f"llmir_append_kv_{entry.name}" in names
        assert f"llmir_paged_attention_{entry.name}" in names
        assert f"llmir_create_kv_cache_{entry.name}" in names


@pytest.mark.parametrize("spec", ["i16", "int16", np.int16, i16, IntegerType(2), None])
def test_runtime_rejects_an_unknown_type(spec: object) -> None:
    with pytest.raises(DTypeError, match="unsupported KV cache element type"):
        element_type(spec)
    with pytest.raises(DTypeError, match="expected f32, f16, bf16, i8 or i4"):
        PagedKVCache(1, 1, 4, 4, 8, spec)


def test_verifier_rejects_an_unknown_type() -> None:
    with pytest.raises(
        VerifyException, match="element type must be f32, f16, bf16, i8 or i4"
    ):
        PagedKVCacheType(i16, 1, 1, 4, 4, 8).verify()


def test_lowering_rejects_an_unknown_type() -> None:
    """A module built in Python and lowered without verifying first: the
    lookup's results are f64, which no cache element type names."""
    cache_type = PagedKVCacheType(f16, 1, 1, 4, 4, 8)
    create = CreateKVCacheOp(cache_type, 4)
    table = test.TestOp(result_types=[TensorType(i32, [1, 2]), TensorType(i32, [1])])
    lookup = LookupKVOp(
        create.cache, table.results[0], table.results[1], element_type=f64
    )
    body = Block([create, table, lookup, func.ReturnOp(*lookup.results)])
    result_types = [r.type for r in lookup.results]
    function = func.FuncOp("f", ((), result_types), Region(body))
    module = ModuleOp([function])
    with pytest.raises(PassFailedException, match="f64 is not in the element-type"):
        ConvertLLMToFuncPass().apply(llmir_context(), module)
