"""Builders, accessors and verification of the `llm` dialect from Python."""

from __future__ import annotations

import math

import pytest
from xdsl.dialects.builtin import DYNAMIC_INDEX, TensorType, bf16, f16, f32, i32, i64
from xdsl.ir import Attribute
from xdsl.utils.exceptions import VerifyException
from xdsl.utils.test_value import create_ssa_value

from llmir.dialects.llm import (
    AppendKVOp,
    BlockTableOp,
    CreateKVCacheOp,
    ForkSequenceOp,
    FreeSequenceOp,
    LookupKVOp,
    MatchPrefixOp,
    PagedAttentionOp,
    PagedKVCacheType,
)

CACHE = PagedKVCacheType(f16, 2, 4, 8, 16, 64)


def tensor(element_type: Attribute, *shape: int) -> TensorType:
    return TensorType(element_type, shape)


def test_type_accessors() -> None:
    assert CACHE.element_type == f16
    assert (CACHE.num_layers, CACHE.num_heads, CACHE.head_dim) == (2, 4, 8)
    assert (CACHE.block_size, CACHE.max_seq_len) == (16, 64)
    assert CACHE.max_blocks_per_seq == 4
    assert CACHE.cache_element_type.itemsize == 2
    assert CACHE.bytes_per_token == 2 * 4 * 8 * 2
    assert PagedKVCacheType(f32, 1, 1, 4, 4, 8).bytes_per_token == 2 * 4 * 4
    assert PagedKVCacheType(bf16, 1, 1, 4, 4, 8).cache_element_type.name == "bf16"
    # The type's geometry is the runtime's: one source for both.
    geometry = CACHE.geometry
    assert geometry.pool_shape(3) == (2, 3, 4, 2, 16, 8)
    assert geometry.bytes_per_block == 2 * 4 * 2 * 16 * 8 * 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (i32, 1, 1, 4, 4, 8),
            "element type must be f32, f16, bf16, i8 or i4, got i32",
        ),
        ((f16, 1, 0, 4, 4, 8), r"num_heads must be in \[1, 2147483647\], got 0"),
        ((f16, 1, 1, 4, 6, 12), "block_size must be a power of two, got 6"),
        ((f16, 1, 1, 4, 4, 10), "max_seq_len 10 must be a multiple of block_size 4"),
    ],
)
def test_type_rejects_bad_geometry(args: tuple[Attribute, ...], message: str) -> None:
    with pytest.raises(VerifyException, match=message):
        PagedKVCacheType(*args)  # type: ignore[arg-type]


def test_create_builder() -> None:
    op = CreateKVCacheOp(CACHE, 32)
    op.verify()
    assert op.num_blocks == 32
    assert op.cache.type == CACHE
    assert op.num_blocks_attr.type == i64


def test_append_builder_infers_result_types_and_defaults() -> None:
    cache = create_ssa_value(CACHE)
    keys = create_ssa_value(tensor(f32, 2, 3, 4, 8))
    seq_ids = create_ssa_value(tensor(i32, 2))
    op = AppendKVOp(cache, keys, keys, seq_ids)
    op.verify()
    assert op.new_cache.type == CACHE
    assert op.block_indices.type == tensor(i32, 2, 3)
    assert op.layer == 0
    assert op.block_size_attr is None

    with_geometry = AppendKVOp(cache, keys, keys, seq_ids, layer=1, with_geometry=True)
    with_geometry.verify()
    assert with_geometry.layer == 1
    assert with_geometry.block_size_attr is not None
    assert with_geometry.block_size_attr.value.data == 16
    assert with_geometry.max_seq_len_attr is not None
    assert with_geometry.max_seq_len_attr.value.data == 64


def test_append_builder_rejects_layer_out_of_range() -> None:
    cache = create_ssa_value(CACHE)
    keys = create_ssa_value(tensor(f16, 2, 1, 4, 8))
    op = AppendKVOp(cache, keys, keys, create_ssa_value(tensor(i32, 2)), layer=2)
    with pytest.raises(VerifyException, match="layer 2 out of range for a cache of 2"):
        op.verify()


def test_block_table_and_lookup_builders() -> None:
    cache = create_ssa_value(CACHE)
    table_op = BlockTableOp(cache, create_ssa_value(tensor(i32, 3)))
    table_op.verify()
    assert table_op.block_table.type == tensor(i32, 3, 4)
    assert table_op.seq_lens.type == tensor(i32, 3)

    narrow = BlockTableOp(cache, create_ssa_value(tensor(i32, 3)), max_blocks=2)
    lookup = LookupKVOp(cache, narrow.block_table, narrow.seq_lens, layer=1)
    lookup.verify()
    # Default length is the table's capacity, 2 blocks of 16 tokens.
    assert lookup.keys.type == tensor(f16, 3, 32, 4, 8)
    assert lookup.values.type == lookup.keys.type
    assert lookup.layer == 1

    as_f32 = LookupKVOp(
        cache, narrow.block_table, narrow.seq_lens, max_len=5, element_type=f32
    )
    as_f32.verify()
    assert as_f32.keys.type == tensor(f32, 3, 5, 4, 8)


def test_attention_builder_defaults() -> None:
    cache = create_ssa_value(CACHE)
    query = create_ssa_value(tensor(f16, 2, 1, 8, 8))
    table = BlockTableOp(cache, create_ssa_value(tensor(i32, 2)))
    op = PagedAttentionOp(query, cache, table.block_table, table.seq_lens)
    op.verify()
    assert op.output.type == query.type
    assert op.scale == pytest.approx(1 / math.sqrt(8))
    assert op.causal is True
    assert op.layer == 0

    explicit = PagedAttentionOp(
        query,
        cache,
        table.block_table,
        table.seq_lens,
        scale=0.5,
        layer=1,
        causal=False,
        with_geometry=True,
    )
    explicit.verify()
    assert (explicit.scale, explicit.layer, explicit.causal) == (0.5, 1, False)
    assert explicit.num_heads_attr is not None
    assert explicit.num_heads_attr.value.data == 8


def test_attention_rejects_heads_not_multiple_of_kv_heads() -> None:
    cache = create_ssa_value(CACHE)
    query = create_ssa_value(tensor(f16, 2, 1, 6, 8))
    table = BlockTableOp(cache, create_ssa_value(tensor(i32, 2)))
    op = PagedAttentionOp(query, cache, table.block_table, table.seq_lens)
    with pytest.raises(
        VerifyException,
        match="query num_heads 6 is not a multiple of cache num_heads 4",
    ):
        op.verify()


def test_dynamic_batch_is_accepted() -> None:
    cache = create_ssa_value(CACHE)
    keys = create_ssa_value(tensor(f16, DYNAMIC_INDEX, 1, 4, 8))
    op = AppendKVOp(cache, keys, keys, create_ssa_value(tensor(i32, DYNAMIC_INDEX)))
    op.verify()
    assert op.block_indices.type == tensor(i32, DYNAMIC_INDEX, 1)


def test_sharing_builders() -> None:
    create = CreateKVCacheOp(CACHE, 32, prefix_caching=True, eviction="priority")
    create.verify()
    assert create.prefix_caching and create.eviction == "priority"
    plain = CreateKVCacheOp(CACHE, 32)
    assert not plain.prefix_caching and plain.eviction == "lru"
    cache = create.cache
    ids = create_ssa_value(tensor(i32, 2))
    keys = create_ssa_value(tensor(f16, 2, 3, 4, 8))
    tokens = create_ssa_value(tensor(i32, 2, 3))
    append = AppendKVOp(cache, keys, keys, ids, tokens)
    append.verify()
    assert append.token_ids is tokens
    assert AppendKVOp(cache, keys, keys, ids).token_ids is None
    prompts = create_ssa_value(tensor(i32, 2, 40))
    match = MatchPrefixOp(cache, ids, prompts)
    match.verify()
    assert match.cached_lens.type == tensor(i32, 2)
    fork = ForkSequenceOp(cache, ids, ids)
    fork.verify()
    free = FreeSequenceOp(cache, ids, priority=3)
    free.verify()
    assert free.priority == 3 and FreeSequenceOp(cache, ids).priority is None
    # Every sharing op writes the cache (a new version) and allocates none.
    for op in (match, fork, free):
        assert op.writes_cache() and not op.allocates_cache()
        assert op.get_updated_cache() is op.results[0]


def test_sharing_builders_reject_bad_operands() -> None:
    cache = CreateKVCacheOp(CACHE, 32).cache
    ids = create_ssa_value(tensor(i32, 2))
    keys = create_ssa_value(tensor(f16, 2, 3, 4, 8))
    with pytest.raises(VerifyException, match="token_ids batch 3 does not match"):
        AppendKVOp(cache, keys, keys, ids, create_ssa_value(tensor(i32, 3, 3))).verify()
    with pytest.raises(VerifyException, match="unknown eviction policy"):
        CreateKVCacheOp(CACHE, 8, eviction="fifo").verify()
    with pytest.raises(VerifyException, match="children count 3"):
        ForkSequenceOp(cache, ids, create_ssa_value(tensor(i32, 3))).verify()
