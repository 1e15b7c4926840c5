"""validate_block_table: every rule, with the message naming the bad value."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llmir.errors import BlockTableError, DTypeError, ShapeError
from llmir.runtime import BlockTable, validate_block_table

LIMITS = {"block_size": 4, "num_blocks": 10, "max_seq_len": 12}


def _check(table: Any, lens: Any) -> BlockTable:
    return validate_block_table(np.asarray(table), np.asarray(lens), **LIMITS)


def test_valid_table_is_returned_as_int32() -> None:
    checked = _check(np.array([[0, 1, -1], [2, -1, -1]], np.int64), [5, 4])
    table, lens = checked.table, checked.lens
    assert table.dtype == np.int32 and lens.dtype == np.int32
    assert table.flags.c_contiguous
    assert checked.max_len == 5 and checked.batch == 2
    # Block ids past the end are allowed (a table cut from a longer sequence).
    _check([[0, 1, 2]], [3])
    # Empty batch.
    _check(np.zeros((0, 0), np.int32), np.zeros(0, np.int32))


@pytest.mark.parametrize(
    ("table", "lens", "error", "message"),
    [
        ([[0, 1]], [1.0], DTypeError, "seq_lens must hold integers"),
        ([[0.0, 1.0]], [1], DTypeError, "block_table must hold integers"),
        ([0, 1], [1], ShapeError, "must be 2-D"),
        ([[0, 1]], [[1]], ShapeError, "must be 1-D"),
        ([[0, 1]], [1, 2], ShapeError, "1 rows but seq_lens has 2"),
        ([[0, 1]], [-1], BlockTableError, r"seq_lens\[0\] = -1 is negative"),
        ([[0, 1, 2, 3]], [13], BlockTableError, "13 exceeds max_seq_len 12"),
        ([[0, 1]], [9], BlockTableError, r"= 9 but block_table covers only 8 tokens"),
        ([[0, -1]], [5], BlockTableError, r"block_table\[0, 1\] = -1 is padding"),
        (
            [[0, 10]],
            [5],
            BlockTableError,
            r"\[0, 1\] = 10 is out of range, the pool has 10",
        ),
        ([[-3, 1]], [5], BlockTableError, r"\[0, 0\] = -3 is out of range"),
        ([[0, -2]], [2], BlockTableError, r"\[0, 1\] = -2 is neither a block id"),
        ([[0, 11]], [2], BlockTableError, r"\[0, 1\] = 11 is neither"),
    ],
)
def test_bad_tables(
    table: Any, lens: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        _check(table, lens)
