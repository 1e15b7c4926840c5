"""Argument checks shared by every paged-attention backend (CPU and CUDA), so
that both reject the same calls with the same messages, before any work."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmir.errors import ConfigError, ShapeError


@dataclass(frozen=True)
class AttentionOptions:
    """Checked attention options: `scale` resolved (default 1/sqrt(D)),
    None for an absent window or soft cap."""

    scale: float
    sliding_window: int | None
    logits_soft_cap: float | None


def check_query_shape(
    q_shape: Sequence[int], batch: int, num_kv_heads: int, head_dim: int
) -> None:
    """A query of shape [batch, Tq, Hq, D] for `batch` sequences of a pool
    with `num_kv_heads` heads of `head_dim`, Hq a positive multiple of them."""
    if len(q_shape) != 4:
        raise ShapeError(
            f"query must be 4-D [batch, Tq, Hq, D], got shape {tuple(q_shape)}"
        )
    q_batch, _, q_heads, q_dim = q_shape
    if q_batch != batch:
        raise ShapeError(f"query has batch {q_batch} but seq_lens has {batch} entries")
    if q_dim != head_dim:
        raise ShapeError(
            f"query head_dim {q_dim} does not match the cache's {head_dim}"
        )
    if q_heads == 0 or q_heads % num_kv_heads:
        raise ShapeError(
            f"query has {q_heads} heads, not a positive multiple of the cache's "
            f"{num_kv_heads} kv heads"
        )


def check_attention_options(
    scale: float | None,
    head_dim: int,
    sliding_window: Any,
    logits_soft_cap: float | None,
) -> AttentionOptions:
    """Resolve and check scale, window and soft cap (callers may pass anything
    for the window, hence `Any`)."""
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"scale must be a finite positive number, got {scale!r}")
    if sliding_window is not None and (
        isinstance(sliding_window, bool)
        or not isinstance(sliding_window, int | np.integer)
        or sliding_window < 1
    ):
        raise ConfigError(
            f"sliding_window must be a positive integer, got {sliding_window!r}"
        )
    if logits_soft_cap is not None and not (
        math.isfinite(logits_soft_cap) and logits_soft_cap > 0
    ):
        raise ConfigError(
            f"logits_soft_cap must be a finite positive number, got {logits_soft_cap!r}"
        )
    return AttentionOptions(
        float(scale),
        None if sliding_window is None else int(sliding_window),
        None if logits_soft_cap is None else float(logits_soft_cap),
    )
