"""The KVCacheInterface / AttentionInterface queries and the memory effects."""

from __future__ import annotations

import pytest
from xdsl.dialects.builtin import DYNAMIC_INDEX, TensorType, f16, f32, i32
from xdsl.ir import SSAValue
from xdsl.traits import MemoryEffectKind, get_effects, is_side_effect_free
from xdsl.utils.test_value import create_ssa_value

from llmir.dialects.interfaces import AttentionInterface, KVCacheInterface
from llmir.dialects.llm import (
    AppendKVOp,
    BlockTableOp,
    CreateKVCacheOp,
    FreeSequenceOp,
    LookupKVOp,
    PagedAttentionOp,
    PagedKVCacheType,
)

CACHE = PagedKVCacheType(f16, 3, 2, 16, 8, 64)


def _table(cache: SSAValue, batch: int, width: int | None = None) -> BlockTableOp:
    return BlockTableOp(cache, create_ssa_value(TensorType(i32, [batch])), width)


def test_create_allocates() -> None:
    op = CreateKVCacheOp(CACHE, 10)
    assert isinstance(op, KVCacheInterface)
    assert op.get_cache() is op.cache
    assert op.get_cache_type() == CACHE
    assert op.allocates_cache()
    assert not op.writes_cache()
    assert op.get_appended_tokens() == 0
    assert op.get_layer() is None
    effects = get_effects(op)
    assert effects is not None
    assert {e.kind for e in effects} == {MemoryEffectKind.ALLOC}


def test_append_writes_and_counts_tokens() -> None:
    cache = create_ssa_value(CACHE)
    keys = create_ssa_value(TensorType(f32, [3, 5, 2, 16]))
    op = AppendKVOp(cache, keys, keys, create_ssa_value(TensorType(i32, [3])), layer=2)
    assert op.get_cache() is cache
    assert op.get_updated_cache() is op.new_cache
    assert op.writes_cache()
    assert not op.allocates_cache()
    assert op.get_appended_tokens() == 15
    assert op.get_layer() == 2
    assert not is_side_effect_free(op)
    effects = get_effects(op)
    assert effects is not None
    assert {(e.kind, e.value) for e in effects} == {
        (MemoryEffectKind.READ, cache),
        (MemoryEffectKind.WRITE, cache),
    }


def test_append_with_dynamic_tokens_has_unknown_count() -> None:
    cache = create_ssa_value(CACHE)
    keys = create_ssa_value(TensorType(f16, [2, DYNAMIC_INDEX, 2, 16]))
    op = AppendKVOp(cache, keys, keys, create_ssa_value(TensorType(i32, [2])))
    assert op.get_appended_tokens() is None


@pytest.mark.parametrize("make", ["table", "lookup", "attention"])
def test_readers_only_read(make: str) -> None:
    cache = create_ssa_value(CACHE)
    table = _table(cache, 2)
    query = create_ssa_value(TensorType(f16, [2, 1, 4, 16]))
    op: KVCacheInterface
    if make == "table":
        op = table
    elif make == "lookup":
        op = LookupKVOp(cache, table.block_table, table.seq_lens, layer=1)
    else:
        op = PagedAttentionOp(query, cache, table.block_table, table.seq_lens)
    assert not op.writes_cache()
    assert op.get_updated_cache() is None
    assert op.get_appended_tokens() == 0
    effects = get_effects(op)  # type: ignore[arg-type]
    assert effects is not None
    assert {e.kind for e in effects} == {MemoryEffectKind.READ}
    assert op.get_layer() == {"table": None, "lookup": 1, "attention": 0}[make]


def test_attention_interface_decode_gqa() -> None:
    cache = create_ssa_value(CACHE)
    table = _table(cache, 2, width=3)
    query = create_ssa_value(TensorType(f32, [2, 1, 4, 16]))
    op = PagedAttentionOp(query, cache, table.block_table, table.seq_lens)
    assert isinstance(op, AttentionInterface)
    assert op.get_batch_size() == 2
    assert op.get_query_len() == 1
    assert op.get_num_query_heads() == 4
    assert op.get_head_dim() == 16
    assert op.get_scale() == pytest.approx(0.25)
    assert op.is_causal()
    assert op.get_sliding_window() is None
    assert op.get_logits_soft_cap() is None
    # 3 blocks of 8 tokens, for each of the 2 sequences.
    assert op.get_max_kv_len() == 24
    assert op.get_tokens_read() == 2 * 24
    assert op.get_layer() == 0


def test_sliding_window_bounds_the_tokens_read() -> None:
    cache = create_ssa_value(CACHE)
    table = _table(cache, 2, width=3)
    query = create_ssa_value(TensorType(f32, [2, 3, 4, 16]))
    op = PagedAttentionOp(
        query, cache, table.block_table, table.seq_lens, sliding_window=5
    )
    assert op.get_sliding_window() == 5
    # 3 queries with a window of 5 see at most 5 + 3 - 1 keys each sequence.
    assert op.get_tokens_read() == 2 * 7


def test_attention_interface_prefill_with_explicit_attributes() -> None:
    cache = create_ssa_value(CACHE)
    table = _table(cache, 1)
    query = create_ssa_value(TensorType(f16, [DYNAMIC_INDEX, 7, 2, 16]))
    op = PagedAttentionOp(
        query, cache, table.block_table, table.seq_lens, scale=0.1, causal=False
    )
    assert op.get_batch_size() is None
    assert op.get_query_len() == 7
    assert op.get_scale() == pytest.approx(0.1)
    assert not op.is_causal()
    assert op.get_max_kv_len() == 64


def test_free_sequence_writes_without_appending() -> None:
    cache = create_ssa_value(CACHE)
    op = FreeSequenceOp(cache, create_ssa_value(TensorType(i32, [4])))
    op.verify()
    assert op.new_cache.type == CACHE
    assert op.get_updated_cache() is op.new_cache
    assert op.writes_cache()
    assert op.get_appended_tokens() == 0
    assert op.get_layer() is None
    effects = get_effects(op)
    assert effects is not None
    assert {e.kind for e in effects} == {MemoryEffectKind.READ, MemoryEffectKind.WRITE}
