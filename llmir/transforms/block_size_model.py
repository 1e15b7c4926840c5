"""The cost model behind `llm-select-block-size`: measured decode-attention
and append costs per block size, and the choice they imply for a workload.

`llmir/data/block_costs.json` holds, per element type and head geometry
(query heads, kv heads, head_dim) and per measured block size, what the CPU
kernels cost on the machine that wrote it:

* attention: the time per sequence of a decode step over a batch of
  sequences of n tokens, measured at several n (``lengths``, ``seq_us``);
  between them it is interpolated linearly (the cost per token is the
  slope), beyond the last one extrapolated with the last slope.  A curve
  rather than a ``token * n + block * blocks`` fit: n and the block count
  are nearly proportional (the fit is ill-conditioned), and the kernel
  changes strategy with length (long contexts are split into partitions);
* appending one token: ``append_token_ns``, plus ``append_block_ns`` when
  it opens a new block.

`python -m benchmarks.bench_block_size --write` measures and rewrites it.

For a workload given as a sample of sequence lengths, the modelled cost of a
block size is the time of one decode step of all of them (attention, then
one token appended to each), times ``1 + waste_weight * waste``, where
`waste` is the fraction of allocated token slots left empty by the last,
partly filled blocks (memory that could have held other sequences).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

COSTS_RESOURCE = ("llmir.data", "block_costs.json")


@dataclass(frozen=True)
class BlockCost:
    """The measured costs of one block size for one geometry."""

    element: str
    q_heads: int
    kv_heads: int
    head_dim: int
    block_size: int
    lengths: list[int] = field(default_factory=list[int])
    seq_us: list[float] = field(default_factory=list[float])
    """Attention time per sequence at each of `lengths`."""
    append_token_ns: float = 0.0
    append_block_ns: float = 0.0

    def attention_us(self, n: int) -> float:
        """Modelled attention time of one sequence of `n` tokens."""
        xs, ys = self.lengths, self.seq_us
        if n <= xs[-1]:
            return float(np.interp(n, xs, ys))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return ys[-1] + slope * (n - xs[-1])

    @property
    def token_ns(self) -> float:
        """The cost of one more token at long lengths (the last slope)."""
        xs, ys = self.lengths, self.seq_us
        return (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) * 1000

    def scaled(self, factor: float) -> BlockCost:
        """These costs for `factor` times the bytes per token."""
        return BlockCost(
            self.element,
            self.q_heads,
            self.kv_heads,
            self.head_dim,
            self.block_size,
            list(self.lengths),
            [t * factor for t in self.seq_us],
            self.append_token_ns * factor,
            self.append_block_ns,
        )

    def step_us(self, lengths: Sequence[int]) -> float:
        """Modelled time of one decode step (attention, then appending one
        token to every sequence) over sequences of `lengths` tokens."""
        b = self.block_size
        attention = sum(self.attention_us(n) for n in lengths)
        new_blocks = sum(1 for n in lengths if n % b == 0)
        append = self.append_token_ns * len(lengths) + self.append_block_ns * new_blocks
        return attention + append / 1000


def load_costs(path: str | None = None) -> list[BlockCost]:
    """The shipped cost table (or the one at `path`)."""
    if path is None:
        text = (
            resources.files(COSTS_RESOURCE[0]).joinpath(COSTS_RESOURCE[1]).read_text()
        )
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    data: dict[str, Any] = json.loads(text)
    return [BlockCost(**entry) for entry in data["entries"]]


def waste(lengths: Sequence[int], block_size: int) -> float:
    """Fraction of allocated slots that hold no token."""
    allocated = sum(-(-n // block_size) * block_size for n in lengths)
    return 1 - sum(lengths) / allocated if allocated else 0.0


@dataclass(frozen=True)
class Choice:
    block_size: int
    predicted_us: dict[int, float]
    """Modelled step time per candidate block size (before the waste
    weight)."""
    objective: dict[int, float]
    geometry: tuple[str, int, int, int]
    """The (element, q heads, kv heads, head_dim) of the table rows used."""


def nearest_geometry(
    costs: Sequence[BlockCost], element: str, q_heads: int, kv_heads: int, head_dim: int
) -> tuple[str, int, int, int]:
    """The measured geometry closest to the asked one: the same element
    type if measured, then the closest group size (Hq / H) and head bytes."""
    measured = {(c.element, c.q_heads, c.kv_heads, c.head_dim) for c in costs}
    if not measured:
        raise ValueError("the block cost table is empty")

    def distance(g: tuple[str, int, int, int]) -> tuple[int, float, float]:
        return (
            g[0] != element,
            abs(math.log((g[1] / g[2]) / (q_heads / kv_heads))),
            abs(math.log((g[2] * g[3]) / (kv_heads * head_dim))),
        )

    return min(sorted(measured), key=distance)


def choose_block_size(
    costs: Sequence[BlockCost],
    element: str,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    lengths: Sequence[int],
    *,
    max_seq_len: int,
    waste_weight: float = 0.5,
) -> Choice:
    """The measured block size (dividing `max_seq_len`) that minimises the
    modelled step time times ``1 + waste_weight * waste`` for `lengths`."""
    geometry = nearest_geometry(costs, element, q_heads, kv_heads, head_dim)
    # Scale a neighbouring geometry's per-token costs by the bytes per token.
    scale = (kv_heads * head_dim) / (geometry[2] * geometry[3])
    rows = [
        c
        for c in costs
        if (c.element, c.q_heads, c.kv_heads, c.head_dim) == geometry
        and max_seq_len % c.block_size == 0
    ]
    if not rows:
        raise ValueError(f"no measured block size divides max_seq_len {max_seq_len}")
    predicted: dict[int, float] = {}
    objective: dict[int, float] = {}
    for row in rows:
        predicted[row.block_size] = row.scaled(scale).step_us(lengths)
        objective[row.block_size] = predicted[row.block_size] * (
            1 + waste_weight * waste(lengths, row.block_size)
        )
    best = min(objective, key=lambda b: (objective[b], b))
    return Choice(best, predicted, objective, geometry)


def exponential_lengths(mean: int, max_len: int, samples: int = 64) -> list[int]:
    """A workload given as a mean and a maximum: the quantiles of an
    exponential distribution of that mean, capped at `max_len` (chat-like:
    many short sequences, a few long ones)."""
    return [
        max(1, min(max_len, math.ceil(-mean * math.log(1 - (k + 0.5) / samples))))
        for k in range(samples)
    ]
