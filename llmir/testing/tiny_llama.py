"""A randomly initialised Llama-style decoder in numpy, to record the queries,
keys and values real attention layers produce (tests and benchmarks of
cache policies; no download, no torch).

The architecture is Llama's: token embeddings, per layer RMSNorm, GQA
attention with rotary embeddings (RoPE, half-split rotation as in
Hugging Face's ``rotate_half``), a residual, RMSNorm and a SwiGLU MLP.
Weights are drawn from N(0, `init_std`) as Hugging Face initialises a fresh
model (``initializer_range`` 0.02), norms are ones.  Positions are the
tokens' indices, so the recorded keys carry their original RoPE phase:
exactly what a KV cache stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TinyLlamaConfig:
    vocab: int = 1000
    hidden: int = 512
    layers: int = 4
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 64
    intermediate: int = 1376
    rope_theta: float = 10000.0
    init_std: float = 0.02


@dataclass(frozen=True)
class LayerRecord:
    """One layer's attention inputs over the whole sequence: queries
    ``[T, heads, D]``, keys and values ``[T, kv_heads, D]`` (after RoPE)."""

    queries: F32
    keys: F32
    values: F32


def _rms_norm(x: F32) -> F32:
    variance = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
    return (x / np.sqrt(variance + 1e-6)).astype(np.float32)


def _rope(x: F32, theta: float) -> F32:
    """Rotary embedding of ``[T, heads, D]`` at positions 0..T-1."""
    tokens, _, dim = x.shape
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.arange(tokens)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos = np.cos(np.concatenate([angles, angles], axis=-1))[:, None, :]
    sin = np.sin(np.concatenate([angles, angles], axis=-1))[:, None, :]
    half = dim // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(np.float32)


def _causal_attention(q: F32, k: F32, v: F32) -> F32:
    """Exact causal GQA attention, float64 softmax: ``[T, heads, D]``."""
    tokens, heads, dim = q.shape
    group = heads // k.shape[1]
    k64 = np.repeat(k, group, axis=1).astype(np.float64)
    v64 = np.repeat(v, group, axis=1).astype(np.float64)
    logits = np.einsum("qhd,thd->hqt", q.astype(np.float64), k64) / np.sqrt(dim)
    logits += np.triu(np.full((tokens, tokens), -np.inf), k=1)[None]
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("hqt,thd->qhd", weights, v64).astype(np.float32)


def record_attention_inputs(
    config: TinyLlamaConfig, tokens: npt.NDArray[np.int64], seed: int = 0
) -> list[LayerRecord]:
    """Run the random model over `tokens` and record every layer's queries,
    keys and values."""
    rng = np.random.default_rng(seed)
    c = config

    def weight(*shape: int) -> F32:
        return (rng.standard_normal(shape) * c.init_std).astype(np.float32)

    x: F32 = weight(c.vocab, c.hidden)[tokens]
    records: list[LayerRecord] = []
    for _ in range(c.layers):
        wq = weight(c.hidden, c.heads * c.head_dim)
        wk = weight(c.hidden, c.kv_heads * c.head_dim)
        wv = weight(c.hidden, c.kv_heads * c.head_dim)
        wo = weight(c.heads * c.head_dim, c.hidden)
        w_gate = weight(c.hidden, c.intermediate)
        w_up = weight(c.hidden, c.intermediate)
        w_down = weight(c.intermediate, c.hidden)
        h = _rms_norm(x)
        t = h.shape[0]
        q = _rope((h @ wq).reshape(t, c.heads, c.head_dim), c.rope_theta)
        k = _rope((h @ wk).reshape(t, c.kv_heads, c.head_dim), c.rope_theta)
        v = (h @ wv).reshape(t, c.kv_heads, c.head_dim)
        records.append(LayerRecord(q, k, v))
        x = (x + _causal_attention(q, k, v).reshape(t, -1) @ wo).astype(np.float32)
        h = _rms_norm(x)
        gate = h @ w_gate
        mlp = ((gate / (1 + np.exp(-gate))) * (h @ w_up)) @ w_down
        x = (x + mlp).astype(np.float32)
    return records
