"""Device dispatch: one entry point per runtime operation that runs the
kernel of the device the cache lives on.

The interpreter and `llmir-run --device` go through here, so adding a device
means adding a branch here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def paged_attention(
    query: npt.ArrayLike,
    cache: Any,
    block_table: npt.ArrayLike,
    seq_lens: npt.ArrayLike,
    **options: Any,
) -> npt.NDArray[Any]:
    """`llmir.runtime.attention.paged_attention` on the cache's device."""
    device = getattr(cache, "device", "cpu")
    if device == "reference":
        from llmir.runtime.dense_reference import dense_attention

        return dense_attention(
            np.asarray(query),
            cache,
            np.asarray(block_table),
            np.asarray(seq_lens),
            **options,
        )
    if device == "cuda":
        from llmir.runtime.cuda import paged_attention as cuda_attention

        return cuda_attention(query, cache, block_table, seq_lens, **options)
    from llmir.runtime.attention import paged_attention as cpu_attention

    return cpu_attention(query, cache, block_table, seq_lens, **options)
