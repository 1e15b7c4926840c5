"""The passes that consume the interfaces, driven from Python."""

from __future__ import annotations

import pytest
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    DictionaryAttr,
    IntegerAttr,
    ModuleOp,
    TensorType,
    f16,
    i32,
)
from xdsl.utils.exceptions import PassFailedException

from llmir.dialects.llm import (
    AppendKVOp,
    BlockTableOp,
    PagedAttentionOp,
    PagedKVCacheType,
)
from llmir.transforms.llm_kv_cache_stats import STATS_ATTR_NAME, LLMKVCacheStatsPass
from llmir.transforms.llm_verify_kv_cache import LLMVerifyKVCachePass

CACHE = PagedKVCacheType(f16, 1, 2, 4, 4, 16)
KEYS = TensorType(f16, [2, 3, 2, 4])
SEQ_IDS = TensorType(i32, [2])
QUERY = TensorType(f16, [2, 3, 4, 4])


def _module(stale: bool) -> ModuleOp:
    """append, block_table, attention; `stale` makes attention read the old cache."""
    function = func.FuncOp("step", ((CACHE, KEYS, SEQ_IDS, QUERY), ()))
    cache, keys, seq_ids, query = function.body.block.args
    append = AppendKVOp(cache, keys, keys, seq_ids)
    table = BlockTableOp(append.new_cache, seq_ids)
    read_from = cache if stale else append.new_cache
    attention = PagedAttentionOp(query, read_from, table.block_table, table.seq_lens)
    function.body.block.add_ops([append, table, attention, func.ReturnOp()])
    module = ModuleOp([function])
    module.verify()
    return module


def test_stats_pass_annotates_from_interfaces() -> None:
    module = _module(stale=False)
    LLMKVCacheStatsPass().apply(Context(), module)
    function = next(op for op in module.walk() if isinstance(op, func.FuncOp))
    stats = function.attributes[STATS_ATTR_NAME]
    assert isinstance(stats, DictionaryAttr)

    def value(name: str) -> int:
        attr = stats.data[name]
        assert isinstance(attr, IntegerAttr)
        return attr.value.data

    bytes_per_token = 2 * 2 * 4 * 2  # K and V, 2 kv heads, head_dim 4, f16
    max_kv_len = 16  # 4 blocks of 4 tokens
    assert value("tokens_appended") == 6
    assert value("kv_bytes_written") == 6 * bytes_per_token
    assert value("attention_flops_max") == 4 * 2 * 4 * 3 * max_kv_len * 4
    assert value("kv_bytes_read_max") == 2 * max_kv_len * bytes_per_token


def test_verify_pass_accepts_threaded_cache() -> None:
    LLMVerifyKVCachePass().apply(Context(), _module(stale=False))


def test_verify_pass_rejects_stale_cache_read() -> None:
    with pytest.raises(
        PassFailedException, match=r"used by llm\.paged_attention after llm\.append_kv"
    ):
        LLMVerifyKVCachePass().apply(Context(), _module(stale=True))
