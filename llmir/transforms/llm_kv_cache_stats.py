"""
`llm-kv-cache-stats`: per-function KV cache traffic and attention cost.

Annotates every `func.func` that contains `llm` cache ops with a
`llm.kv_stats` dictionary, computed only through `KVCacheInterface` and
`AttentionInterface`:

- `tokens_appended`: tokens written by all appends (batch * T each);
- `kv_bytes_written`: their key+value bytes (one layer each);
- `attention_flops_max`: 4 * batch * Hq * Tq * Lkv * D per attention
  (QK^T and PV), with Lkv the block-table capacity, or the sliding window
  plus the attention sinks when that is smaller: an upper bound;
- `kv_bytes_read_max`: key+value bytes that attention and lookups may read
  (`KVCacheInterface.get_tokens_read` times the bytes of a token; GQA reads
  each kv head once per sequence);
- for the caches the function creates (`KVCacheInterface.get_num_blocks`),
  what their pools cost and hold, counted as `llm-plan-kv-memory` and the
  runtime count it (`llmir.runtime.memory.plan_blocks`): `kv_pool_bytes`,
  `kv_bookkeeping_bytes`, `kv_token_slots`, `kv_max_len_sequences`.

A statistic that depends on a dynamic dimension is left out and its name is
listed in `dynamic`; one that does not fit in i64 (tensors of billions of
elements) is left out and listed in `overflow`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.dialects.builtin import (
    ArrayAttr,
    DictionaryAttr,
    IntegerAttr,
    StringAttr,
    i64,
)
from xdsl.ir import Attribute, Operation
from xdsl.passes import ModulePass

from llmir.dialects.interfaces import AttentionInterface, KVCacheInterface
from llmir.runtime.memory import plan_blocks

STATS_ATTR_NAME = "llm.kv_stats"

_I64_MAX = 2**63 - 1


@dataclass
class KVCacheStats:
    """Running totals; a name in `dynamic` marks a total as unknown."""

    tokens_appended: int = 0
    kv_bytes_written: int = 0
    attention_flops_max: int = 0
    kv_bytes_read_max: int = 0
    kv_pool_bytes: int = 0
    kv_bookkeeping_bytes: int = 0
    kv_token_slots: int = 0
    kv_max_len_sequences: int = 0
    creates: int = 0
    dynamic: set[str] = field(default_factory=set[str])

    def add(self, stat: str, amount: int | None) -> None:
        if amount is None:
            self.dynamic.add(stat)
        else:
            setattr(self, stat, getattr(self, stat) + amount)

    def as_attribute(self) -> DictionaryAttr:
        entries: dict[str, Attribute] = {}
        overflow: list[str] = []
        stats = ["tokens_appended", "kv_bytes_written"]
        stats += ["attention_flops_max", "kv_bytes_read_max"]
        if self.creates:
            stats += [
                "kv_pool_bytes",
                "kv_bookkeeping_bytes",
                "kv_token_slots",
                "kv_max_len_sequences",
            ]
        for stat in stats:
            if stat in self.dynamic:
                continue
            value = getattr(self, stat)
            if value > _I64_MAX:
                # A total of static but enormous tensors: left out, named.
                overflow.append(stat)
            else:
                entries[stat] = IntegerAttr(value, i64)
        if self.dynamic:
            entries["dynamic"] = ArrayAttr(
                [StringAttr(stat) for stat in sorted(self.dynamic)]
            )
        if overflow:
            entries["overflow"] = ArrayAttr([StringAttr(stat) for stat in overflow])
        return DictionaryAttr(entries)


def _product(*factors: int | None) -> int | None:
    result = 1
    for factor in factors:
        if factor is None:
            return None
        result *= factor
    return result


def collect_stats(root: Operation) -> KVCacheStats | None:
    """Statistics of the cache ops nested in `root`, None if it has none."""
    stats = KVCacheStats()
    seen_any = False
    for op in root.walk():
        if isinstance(op, KVCacheInterface):
            seen_any = True
            cache = op.get_cache_type()
            num_blocks = op.get_num_blocks()
            if num_blocks is not None:
                plan = plan_blocks(cache.geometry, num_blocks)
                stats.creates += 1
                stats.kv_pool_bytes += plan.pool_bytes
                stats.kv_bookkeeping_bytes += plan.bookkeeping_bytes
                stats.kv_token_slots += plan.tokens
                stats.kv_max_len_sequences += plan.max_len_sequences
            if op.writes_cache():
                tokens = op.get_appended_tokens()
                stats.add("tokens_appended", tokens)
                stats.add("kv_bytes_written", _product(tokens, cache.bytes_per_token))
            stats.add(
                "kv_bytes_read_max",
                _product(op.get_tokens_read(), cache.bytes_per_token),
            )
        if isinstance(op, AttentionInterface):
            seen_any = True
            kv_len = op.get_max_kv_len()
            window = op.get_sliding_window()
            if window is not None:  # each query sees its window and the sinks
                kv_len = min(kv_len, window + (op.get_sink_tokens() or 0))
            stats.add(
                "attention_flops_max",
                _product(
                    4,
                    op.get_batch_size(),
                    op.get_num_query_heads(),
                    op.get_query_len(),
                    kv_len,
                    op.get_head_dim(),
                ),
            )
    return stats if seen_any else None


@dataclass(frozen=True)
class LLMKVCacheStatsPass(ModulePass):
    """Annotates each function with the KV cache statistics of its body."""

    name = "llm-kv-cache-stats"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        for function in op.walk():
            if isinstance(function, func.FuncOp):
                stats = collect_stats(function)
                if stats is not None:
                    function.attributes[STATS_ATTR_NAME] = stats.as_attribute()
