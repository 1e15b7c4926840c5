"""`llm-plan-kv-memory` and the runtime count memory the same way: a cache
created with the planned `num_blocks` reports the planned pool bytes, and a
budget given to the runtime directly buys the same blocks."""

from __future__ import annotations

import pytest
from xdsl.dialects.builtin import IntegerAttr

from llmir.dialects.llm import CreateKVCacheOp
from llmir.errors import ConfigError
from llmir.interpreters.runner import apply_passes, parse_module
from llmir.runtime import PagedKVCache
from llmir.runtime.memory import parse_bytes
from llmir.transforms.plan_kv_memory import PLAN_ATTR_NAME

PROGRAM = """
func.func @main() {
  %a = llm.create_kv_cache {num_blocks = 1 : i64} : !llm.paged_kv_cache<f16, 2, 2, 16, 16, 256>
  CACHE_B
  func.return
}
"""
SECOND = (
    "%b = llm.create_kv_cache {num_blocks = 1 : i64} "
    ": !llm.paged_kv_cache<bf16, 4, 1, 8, 32, 256>"
)


@pytest.mark.parametrize("second", [False, True])
@pytest.mark.parametrize("budget", ["1MiB", "3000000", "2.5MB"])
def test_the_plan_is_what_the_runtime_allocates(second: bool, budget: str) -> None:
    module = parse_module(PROGRAM.replace("CACHE_B", SECOND if second else ""))
    apply_passes(module, f'llm-plan-kv-memory{{budget="{budget}"}}')
    creates = [op for op in module.walk() if isinstance(op, CreateKVCacheOp)]
    total = 0
    for create in creates:
        plan = create.attributes[PLAN_ATTR_NAME]
        entries = {k: v.value.data for k, v in plan.data.items()}  # pyright: ignore[reportAttributeAccessIssue]
        geometry = create.cache.type.geometry  # pyright: ignore[reportAttributeAccessIssue]
        cache = PagedKVCache.from_geometry(geometry, create.num_blocks)
        stats = cache.stats()
        assert entries["blocks"] == create.num_blocks == stats.blocks_total
        assert entries["pool_bytes"] == stats.pool_bytes
        assert entries["tokens"] == stats.blocks_total * geometry.block_size
        total += entries["pool_bytes"] + entries["bookkeeping_bytes"]
        if not second:
            # One cache: the runtime's own budget sizing agrees.
            direct = PagedKVCache.from_geometry(
                geometry, memory_budget_bytes=parse_bytes(budget)
            )
            assert direct.num_blocks == create.num_blocks
    assert total <= parse_bytes(budget)
    # Idempotent.
    before = [c.num_blocks for c in creates]
    apply_passes(module, f'llm-plan-kv-memory{{budget="{budget}"}}')
    assert [c.num_blocks for c in creates] == before
    assert all(isinstance(c.num_blocks_attr, IntegerAttr) for c in creates)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8GiB", 8 << 30),
        ("512MiB", 512 << 20),
        ("16GB", 16 * 10**9),
        ("1000", 1000),
        ("1.5KiB", 1536),
        (" 2 kb ", 2000),
    ],
)
def test_byte_counts(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "GiB", "8 GiBs", "-1", "0", "1e9"])
def test_bad_byte_counts(text: str) -> None:
    with pytest.raises(ConfigError, match="byte"):
        parse_bytes(text)


@pytest.mark.parametrize("text", ["1" + "0" * 310, "9" * 20 + "TiB"])
def test_a_budget_too_large_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="below 2\\^63 bytes"):
        parse_bytes(text)
