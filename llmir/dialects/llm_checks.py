"""
Shared verification helpers of the `llm` ops.

Every message names the op, the offending value and what it was checked
against, e.g. `llm.append_kv: keys head_dim 16 does not match cache head_dim 8`.
A dynamic dimension (`?`) agrees with anything; what cannot be checked
statically is left to the runtime.
"""

from __future__ import annotations

from xdsl.dialects.builtin import DYNAMIC_INDEX, IntegerAttr, TensorType, i32
from xdsl.ir import Attribute, SSAValue
from xdsl.utils.exceptions import VerifyException

from llmir.dialects.llm_type import PagedKVCacheType


def _dim_text(dim: int) -> str:
    return "?" if dim == DYNAMIC_INDEX else str(dim)


def ranked_tensor(op: str, what: str, value_type: Attribute, rank: int) -> TensorType:
    """`value_type` as a ranked tensor of `rank`, or a VerifyException naming it."""
    if not isinstance(value_type, TensorType) or len(value_type.get_shape()) != rank:
        raise VerifyException(
            f"{op}: {what} must be a rank-{rank} tensor, got {value_type}"
        )
    return value_type


def i32_tensor(op: str, what: str, value_type: Attribute, rank: int) -> TensorType:
    tensor = ranked_tensor(op, what, value_type, rank)
    if tensor.get_element_type() != i32:
        raise VerifyException(
            f"{op}: {what} element type must be i32, got {tensor.get_element_type()}"
        )
    return tensor


def dims_agree(op: str, what: str, a: int, other: str, b: int) -> None:
    """Two sizes that must be equal; a dynamic size agrees with anything."""
    if DYNAMIC_INDEX not in (a, b) and a != b:
        raise VerifyException(
            f"{op}: {what} {_dim_text(a)} does not match {other} {_dim_text(b)}"
        )


def static_dim(op: str, what: str, dim: int) -> None:
    if dim == DYNAMIC_INDEX:
        raise VerifyException(f"{op}: {what} must be static")


def at_most(op: str, what: str, dim: int, limit_what: str, limit: int) -> None:
    if dim != DYNAMIC_INDEX and dim > limit:
        raise VerifyException(f"{op}: {what} {dim} exceeds {limit_what} {limit}")


def check_data_element_type(
    op: str, what: str, tensor: TensorType, cache: PagedKVCacheType
) -> None:
    """Keys/values/queries hold f32 or the cache's own element type (f32 or
    f16 for a quantized cache, whose codes are no tensor type)."""
    element_type = tensor.get_element_type()
    allowed = cache.data_element_types
    if element_type not in allowed:
        what_allowed = (
            f"f32 or the cache element type {cache.element_type}"
            if allowed[1] == cache.element_type
            else f"f32 or f16 (the cache is quantized to {cache.element_type})"
        )
        raise VerifyException(
            f"{op}: {what} element type must be {what_allowed}, got {element_type}"
        )


def check_heads_and_dim(
    op: str, what: str, tensor: TensorType, cache: PagedKVCacheType
) -> None:
    """A `[batch, T, H, D]` tensor whose H and D are the cache's."""
    _, _, heads, head_dim = tensor.get_shape()
    static_dim(op, f"{what} num_heads", heads)
    static_dim(op, f"{what} head_dim", head_dim)
    dims_agree(op, f"{what} num_heads", heads, "cache num_heads", cache.num_heads)
    dims_agree(op, f"{what} head_dim", head_dim, "cache head_dim", cache.head_dim)


def check_layer(op: str, layer: int, cache: PagedKVCacheType) -> None:
    if not 0 <= layer < cache.num_layers:
        raise VerifyException(
            f"{op}: layer {layer} out of range for a cache of {cache.num_layers} layers"
        )


def check_optional_geometry(
    op: str, what: str, attr: IntegerAttr | None, expected: int
) -> None:
    """Redundant geometry attributes (the seed's `block_size`) must match the type."""
    if attr is not None and attr.value.data != expected:
        raise VerifyException(
            f"{op}: {what} {attr.value.data} does not match cache {what} {expected}"
        )


def cache_type_of(value: SSAValue) -> PagedKVCacheType:
    # The operand constraint was already checked by IRDL before `verify_`.
    assert isinstance(value.type, PagedKVCacheType)
    return value.type


def same_cache_type(op: str, cache: SSAValue, new_cache: SSAValue) -> PagedKVCacheType:
    """The cache operand's type, which the op's new cache version must have."""
    cache_type = cache_type_of(cache)
    if new_cache.type != cache_type:
        raise VerifyException(
            f"{op}: result cache type {new_cache.type} does not match operand "
            f"cache type {cache_type}"
        )
    return cache_type


def i32_attr_or_none(value: int | None) -> IntegerAttr | None:
    return None if value is None else IntegerAttr(value, i32)


def check_table_and_lens(
    op: str, table_value: SSAValue, lens_value: SSAValue, cache: PagedKVCacheType
) -> tuple[int, int]:
    """Verifies a block table/lengths pair; returns (batch, table width)."""
    table = i32_tensor(op, "block_table", table_value.type, 2)
    batch, width = table.get_shape()
    at_most(
        op,
        "block_table width",
        width,
        "max_seq_len / block_size",
        cache.max_blocks_per_seq,
    )
    lens = i32_tensor(op, "seq_lens", lens_value.type, 1)
    dims_agree(op, "seq_lens batch", lens.get_shape()[0], "block_table batch", batch)
    return batch, width


def check_keys_and_values(
    op: str, keys_value: SSAValue, values_value: SSAValue, cache: PagedKVCacheType
) -> TensorType:
    """`[batch, T, H, D]` keys and values of one type, f32 or the cache's
    element type, with the cache's heads and head_dim; returns the type."""
    keys = ranked_tensor(op, "keys", keys_value.type, 4)
    if values_value.type != keys:
        raise VerifyException(
            f"{op}: values type {values_value.type} does not match keys type {keys}"
        )
    check_data_element_type(op, "keys", keys, cache)
    check_heads_and_dim(op, "keys", keys, cache)
    return keys


def batch_times_tokens(tensor_value: SSAValue) -> int | None:
    """``batch * T`` of a `[batch, T, ...]` tensor, None if either is dynamic."""
    tensor_type = tensor_value.type
    assert isinstance(tensor_type, TensorType)
    batch, tokens = tensor_type.get_shape()[:2]
    if DYNAMIC_INDEX in (batch, tokens):
        return None
    return batch * tokens
