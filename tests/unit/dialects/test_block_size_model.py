"""The cost model of `llm-select-block-size`: the shipped table loads and
covers every element type, choices follow the workload, and a geometry that
was not measured borrows the nearest one, scaled by its bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmir.runtime.dtypes import FLOAT_TYPES
from llmir.transforms.block_size_model import (
    choose_block_size,
    exponential_lengths,
    load_costs,
    nearest_geometry,
    waste,
)

SYNTHETIC = Path(__file__).parents[2] / "filecheck/transforms/inputs/block_costs.json"


def test_the_shipped_table_covers_every_float_element_type() -> None:
    # The quantized types (i8, i4) are not measured yet: a cache of them
    # borrows the nearest measured geometry's costs (`nearest_geometry`).
    costs = load_costs()
    assert {c.element for c in costs} == set(FLOAT_TYPES)
    for c in costs:
        assert c.lengths == sorted(c.lengths) and len(c.lengths) == len(c.seq_us)
        assert all(t > 0 for t in c.seq_us)
        assert c.attention_us(c.lengths[-1] * 2) > c.seq_us[-1]  # extrapolates


def test_choices_follow_the_workload() -> None:
    costs = load_costs(str(SYNTHETIC))
    long = choose_block_size(costs, "f16", 4, 2, 8, [4000, 4000], max_seq_len=4096)
    short = choose_block_size(costs, "f16", 4, 2, 8, [20, 30, 40, 50], max_seq_len=4096)
    assert (long.block_size, short.block_size) == (64, 8)
    # Without the waste weight, the short workload goes for fewer blocks.
    no_waste = choose_block_size(
        costs, "f16", 4, 2, 8, [20, 30, 40, 50], max_seq_len=4096, waste_weight=0
    )
    assert no_waste.objective == no_waste.predicted_us
    # Only block sizes that divide max_seq_len are candidates.
    narrow = choose_block_size(costs, "f16", 4, 2, 8, [4000], max_seq_len=48)
    assert set(narrow.predicted_us) == {8, 16}


def test_an_unmeasured_geometry_borrows_the_nearest() -> None:
    costs = load_costs(str(SYNTHETIC))
    assert nearest_geometry(costs, "bf16", 8, 4, 16) == ("f16", 4, 2, 8)
    base = choose_block_size(costs, "f16", 4, 2, 8, [1000], max_seq_len=4096)
    double = choose_block_size(costs, "f16", 8, 4, 8, [1000], max_seq_len=4096)
    # Twice the kv heads: twice the attention cost per token.
    assert double.predicted_us[64] > 1.9 * base.predicted_us[64] - 1


def test_workload_helpers() -> None:
    lengths = exponential_lengths(400, 8192)
    assert len(lengths) == 64 and max(lengths) <= 8192 and min(lengths) >= 1
    assert 250 < sum(lengths) / len(lengths) < 450
    assert waste([16, 32], 16) == 0.0
    assert waste([1], 16) == pytest.approx(15 / 16)
