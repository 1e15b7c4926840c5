"""validate_block_table: every rule, with the message naming the bad value."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmir.errors import BlockTableError, ConfigError, DTypeError, ShapeError
from llmir.runtime import BlockTable, validate_block_table
from llmir.runtime.validation import check_attention_options

LIMITS = {"block_size": 4, "num_blocks": 10, "max_seq_len": 12}


def _check(table: Any, lens: Any, dtype: Any = None) -> BlockTable:
    return validate_block_table(
        np.asarray(table, dtype), np.asarray(lens, dtype), **LIMITS
    )


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
@pytest.mark.parametrize("dtype", [None, np.int32])
def test_bad_tables(
    table: Any, lens: Any, error: type[Exception], message: str, dtype: Any
) -> None:
    # int32 tables (what the cache hands out) take the compiled one-pass
    # check first; it must let nothing through that the full checks refuse.
    if dtype is not None and "f" in (
        np.asarray(table).dtype.kind,
        np.asarray(lens).dtype.kind,
    ):
        dtype = None
    with pytest.raises(error, match=message):
        _check(table, lens, dtype)


def _outcome(table: Any, lens: Any) -> tuple[str, int, bytes, bytes]:
    try:
        checked = validate_block_table(table, lens, **LIMITS)
    except BlockTableError as exc:
        return (str(exc), -1, b"", b"")
    return ("ok", checked.max_len, checked.table.tobytes(), checked.lens.tobytes())


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda width: st.tuples(
            st.lists(
                st.lists(st.integers(-3, 11), min_size=width, max_size=width),
                min_size=1,
                max_size=4,
            ),
            st.lists(st.integers(-1, 13), min_size=4, max_size=4),
        )
    )
)
def test_the_fast_path_agrees_with_the_full_checks(
    case: tuple[list[list[int]], list[int]],
) -> None:
    rows, lens = case
    lens = lens[: len(rows)]
    fast = _outcome(np.array(rows, np.int32), np.array(lens, np.int32))
    full = _outcome(np.array(rows, np.int64), np.array(lens, np.int64))
    assert fast == full


def test_remembered_attention_options_keep_types_apart() -> None:
    # Checked options are remembered by value and type: 1 is a scale, True
    # is not, whichever comes first; unhashable values are checked each time.
    assert check_attention_options(64, 1).scale == 1.0
    with pytest.raises(ConfigError, match="scale must be a number, got True"):
        check_attention_options(64, True)
    assert check_attention_options(64, 1, sliding_window=4).sliding_window == 4
    with pytest.raises(ConfigError, match="sliding_window must be an integer"):
        check_attention_options(64, 1, sliding_window=4.0)
    with pytest.raises(ConfigError, match="scale must be a number"):
        check_attention_options(64, np.array([0.5]))
    with pytest.raises(ConfigError, match="sink_tokens=2 needs a sliding_window"):
        check_attention_options(64, sink_tokens=2)
    with pytest.raises(ConfigError, match="sink_tokens=2 needs a sliding_window"):
        check_attention_options(64, sink_tokens=2)
