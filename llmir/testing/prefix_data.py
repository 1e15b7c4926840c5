"""Keys and values that are a function of the token prefix, as a causal
transformer's are: the data prefix-caching tests and benchmarks need.

Prefix caching hands one sequence another's stored keys and values on the
promise that equal token prefixes produce equal K/V.  Random K/V break that
promise; `prefix_kv` keeps it: position ``p`` of layer ``l`` depends on
every token up to ``p`` (through a rolling hash) and on nothing else, so
recomputing a prompt from scratch and reusing a cached prefix must store
bit-identical values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

_MODULUS = 1_000_003


def prefix_state(tokens: Sequence[int] | npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """The rolling hash after each token: ``s[p] = (31 s[p-1] + t[p] + 1) mod
    m``, a stand-in for the hidden state a prefix leaves."""
    state = np.empty(len(tokens), np.int64)
    s = 0
    for p, t in enumerate(np.asarray(tokens, np.int64).tolist()):
        s = (31 * s + t + 1) % _MODULUS
        state[p] = s
    return state


def prefix_kv(
    tokens: Sequence[int] | npt.NDArray[Any],
    num_layers: int,
    num_heads: int,
    head_dim: int,
    start: int = 0,
) -> tuple[Array, Array]:
    """Keys and values ``[num_layers, len(tokens) - start, H, D]`` float32 of
    positions ``[start, len(tokens))`` of the prompt `tokens`."""
    state = prefix_state(tokens)[start:].astype(np.float64)
    layer = np.arange(num_layers, dtype=np.float64)[:, None, None, None]
    lane = np.arange(num_heads * head_dim, dtype=np.float64).reshape(
        1, 1, num_heads, head_dim
    )
    phase = state[None, :, None, None] * 0.001 + layer * 0.7 + lane * 0.13
    keys = np.sin(phase).astype(np.float32)
    values = np.cos(1.7 * phase).astype(np.float32)
    return keys, values
