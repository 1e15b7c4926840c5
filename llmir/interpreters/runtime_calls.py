"""The runtime functions behind the `llm` ops, over numpy arrays.

Both execution paths of the interpreter end here: `LLMFunctions` (the `llm`
ops themselves) and `LLMRuntimeFunctions` (the `func.call`s that
`convert-llm-to-func` produces).  Sharing one implementation is what makes a
module's results bit-identical before and after lowering.

Each function takes the op's operands as numpy arrays (see
`llmir.interpreters.arrays` for the element-type mapping), its attributes as
Python scalars, and the IR result types, and returns numpy arrays shaped as
those types say.  Static result dimensions are honoured: a block table or a
lookup result is padded to the static width the IR asks for, and a sequence
that does not fit in it is an error, never a silent truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from xdsl.dialects.builtin import BFloat16Type, Float32Type, TensorType
from xdsl.ir import Attribute

from llmir.dialects.llm_type import PagedKVCacheType
from llmir.errors import (
    BlockTableError,
    SequenceError,
    ShapeError,
    UnknownSequenceError,
)
from llmir.interpreters.arrays import numpy_dtype_for
from llmir.runtime.dtypes import BF16, decode, encode

Array = npt.NDArray[Any]


def _tensor_type(type_attr: Attribute) -> TensorType[Any]:
    assert isinstance(type_attr, TensorType)
    return type_attr  # pyright: ignore[reportUnknownVariableType]


def _static_dim(tensor_type: TensorType[Any], axis: int) -> int | None:
    dim = tensor_type.get_shape()[axis]
    return None if dim < 0 else dim


def _bf16_to_f32(array: Array, element_type: Attribute) -> Array:
    """bf16 tensors travel as uint16 bits; the attention kernel wants their
    float32 values (exact)."""
    if isinstance(element_type, BFloat16Type):
        return decode(array, BF16)
    return array


def to_element_type(array: Array, element_type: Attribute) -> Array:
    """Convert a float result to the numpy form of `element_type`."""
    if isinstance(element_type, BFloat16Type):
        return encode(array, BF16)
    return np.ascontiguousarray(array, dtype=numpy_dtype_for(element_type))


def create_kv_cache(cache_type: PagedKVCacheType, num_blocks: int, device: str) -> Any:
    """A `PagedKVCache` on `device`, or the dense stand-in of
    `llmir.runtime.dense_reference` for device "reference"."""
    if device == "reference":
        from llmir.runtime.dense_reference import DenseReferenceCache as cache_class
    else:
        from llmir.runtime import PagedKVCache as cache_class

    return cache_class(
        cache_type.num_layers,
        cache_type.num_heads,
        cache_type.head_dim,
        cache_type.block_size,
        cache_type.max_seq_len,
        _element_name(cache_type.element_type),
        num_blocks=num_blocks,
        device=device,
    )


def _element_name(element_type: Attribute) -> str:
    if isinstance(element_type, Float32Type):
        return "f32"
    if isinstance(element_type, BFloat16Type):
        return "bf16"
    return "f16"


def append_kv(
    cache: Any, keys: Array, values: Array, seq_ids: Array, layer: int
) -> Array:
    return cache.append_kv(keys, values, seq_ids, layer=layer)


def block_table(
    cache: Any, seq_ids: Array, result_types: Sequence[Attribute]
) -> tuple[Array, Array]:
    table, lens = cache.block_table(seq_ids)
    width = _static_dim(_tensor_type(result_types[0]), 1)
    if width is None:
        return table, lens
    if table.shape[1] > width:
        worst = int(np.argmax((table >= 0).sum(axis=1)))
        raise BlockTableError(
            f"sequence {int(seq_ids[worst])} holds "
            f"{int((table[worst] >= 0).sum())} blocks, but the result type "
            f"{result_types[0]} has room for {width}"
        )
    padded = np.full((table.shape[0], width), -1, dtype=np.int32)
    padded[:, : table.shape[1]] = table
    return padded, lens


def lookup_kv(
    cache: Any,
    table: Array,
    lens: Array,
    layer: int,
    result_types: Sequence[Attribute],
) -> tuple[Array, Array]:
    keys_type = _tensor_type(result_types[0])
    element_type = keys_type.element_type
    as_float32 = isinstance(element_type, Float32Type | BFloat16Type)
    length = _static_dim(keys_type, 1)
    if length is None:
        keys, values = cache.lookup_kv(table, lens, layer, as_float32=as_float32)
    else:
        longest = int(np.max(lens)) if lens.size else 0
        if longest > length:
            raise ShapeError(
                f"lookup of sequences up to {longest} tokens does not fit the "
                f"result type {keys_type}"
            )
        dtype = np.float32 if as_float32 else numpy_dtype_for(element_type)
        shape = (table.shape[0], length, cache.num_heads, cache.head_dim)
        out = (np.empty(shape, dtype), np.empty(shape, dtype))
        keys, values = cache.lookup_kv(
            table, lens, layer, as_float32=as_float32, out=out
        )
    return to_element_type(keys, element_type), to_element_type(values, element_type)


def paged_attention(
    query: Array,
    query_type: Attribute,
    cache: Any,
    table: Array,
    lens: Array,
    layer: int,
    scale: float,
    causal: bool,
    sliding_window: int | None,
    logits_soft_cap: float | None,
    result_type: Attribute,
) -> Array:
    from llmir.runtime.dispatch import paged_attention as dispatch_attention

    query_element = _tensor_type(query_type).element_type
    output = dispatch_attention(
        _bf16_to_f32(query, query_element),
        cache,
        table,
        lens,
        layer=layer,
        scale=scale,
        causal=causal,
        sliding_window=sliding_window,
        logits_soft_cap=logits_soft_cap,
    )
    return to_element_type(output, _tensor_type(result_type).element_type)


def free_sequence(cache: Any, seq_ids: Array) -> None:
    """Free every listed sequence, or (on a bad id) none of them."""
    ids = [int(s) for s in seq_ids]
    if len(set(ids)) != len(ids):
        raise SequenceError(f"sequence ids {ids} list a sequence twice")
    for seq_id in ids:
        if seq_id not in cache:
            raise UnknownSequenceError(f"sequence {seq_id} is not in the cache")
    for seq_id in ids:
        cache.free_sequence(seq_id)
