"""`LlmirCache`: transformers' `Cache` whose storage is llmir's paged block
pool, and whose attention runs in llmir's kernels.

transformers calls ``cache.update(k, v, layer_idx)`` and then the
registered attention function (`llmir.integrations.transformers.attention`)
in every attention layer.  Here `update` only records the step's keys and
values; the attention function hands them, with the query, to the cache's
`LayerStep`, which appends them to the pool and attends over it: no K/V
tensor is ever gathered back into a contiguous copy.

Each row of the batch is an llmir sequence.  `set_batch` says which (the
continuous-batching engine changes it every step); without it, the first
forward starts one new sequence per row (``model.generate`` on an unpadded
batch).
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, CacheLayerMixin

from llmir.errors import ConfigError, SequenceError, ShapeError
from llmir.integrations.transformers.steps import (
    AttentionOptions,
    LayerStep,
    direct_step,
)
from llmir.integrations.transformers.tensors import as_tensor, kv_array, query_array
from llmir.runtime.kv_cache import PagedKVCache
from llmir.runtime.validation import check_seq_ids

# The cache whose keys the attention function is about to read: transformers
# hands that function the layer's keys but not the cache they came from.
# `stage` sets it, `attend` clears it, so no forward leaves a reference behind.
STAGING_CACHE: contextvars.ContextVar[LlmirCache | None] = contextvars.ContextVar(
    "llmir_staging_cache", default=None
)


@dataclass(frozen=True)
class ModelShape:
    """The cache geometry a decoder's config implies."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_positions: int

    @classmethod
    def of(cls, config: PretrainedConfig) -> ModelShape:
        text = config.get_text_config()
        heads = int(text.num_attention_heads)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(
            num_layers=int(text.num_hidden_layers),
            num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            max_positions=int(getattr(text, "max_position_embeddings", 4096)),
        )


@dataclass
class _PendingLayer:
    keys: torch.Tensor
    values: torch.Tensor


class LlmirLayer(CacheLayerMixin):
    """One layer's view of the shared pool: it holds no tensors, only the
    step's pending keys and values until attention consumes them."""

    def __init__(self, owner: LlmirCache, layer: int) -> None:
        super().__init__()
        self._owner = owner
        self._layer = layer
        self.is_initialized = True

    def lazy_initialization(
        self, key_states: torch.Tensor, value_states: torch.Tensor
    ) -> None:
        """The pool exists from the start: nothing to allocate."""

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._owner.stage(self._layer, key_states, value_states)
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._owner.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self._owner.get_seq_length()

    def get_max_length(self) -> int:
        return self._owner.kv.max_seq_len

    def reset(self) -> None:
        self._owner.reset()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise ConfigError(
            "LlmirCache does not reorder rows (beam search); fork sequences "
            "with PagedKVCache.fork instead"
        )


class LlmirCache(Cache):
    """A transformers `Cache` over an llmir `PagedKVCache` (`kv`)."""

    def __init__(self, kv: PagedKVCache, step: LayerStep = direct_step) -> None:
        super().__init__(layers=[LlmirLayer(self, i) for i in range(kv.num_layers)])
        self.kv = kv
        self.step = step
        self._seq_ids: npt.NDArray[np.int64] | None = None
        self._token_ids: npt.NDArray[np.int64] | None = None
        self._pending: dict[int, _PendingLayer] = {}
        self._next_seq_id = 0

    @classmethod
    def for_config(
        cls,
        config: PretrainedConfig,
        *,
        kv_dtype: str = "f32",
        block_size: int = 16,
        num_blocks: int | None = None,
        memory_budget_bytes: int | None = None,
        max_seq_len: int | None = None,
        prefix_caching: bool = False,
        step: LayerStep = direct_step,
    ) -> LlmirCache:
        """A cache shaped for `config`'s decoder: its layers, kv heads and
        head_dim, `max_seq_len` defaulting to its ``max_position_embeddings``.
        Give the pool as `num_blocks` or `memory_budget_bytes`."""
        shape = ModelShape.of(config)
        kv = PagedKVCache(
            shape.num_layers,
            shape.num_kv_heads,
            shape.head_dim,
            block_size,
            max_seq_len or shape.max_positions,
            kv_dtype,
            num_blocks=num_blocks,
            memory_budget_bytes=memory_budget_bytes,
            enable_prefix_caching=prefix_caching,
        )
        return cls(kv, step)

    # -- the rows of the next forward ------------------------------------------

    def set_batch(self, seq_ids: Sequence[int] | Any, token_ids: Any = None) -> None:
        """The llmir sequences the next forward's batch rows extend (new
        ids start new sequences), and optionally the token ids it feeds
        ``[batch, T]`` (indexed for prefix caching)."""
        ids = check_seq_ids(seq_ids)
        if np.unique(ids).size != ids.size:
            raise SequenceError(f"sequence ids of a batch must be distinct, got {ids}")
        self._check_no_pending()
        self._seq_ids = ids
        self._token_ids = None if token_ids is None else np.asarray(token_ids, np.int64)
        self._next_seq_id = max(self._next_seq_id, int(ids.max(initial=-1)) + 1)

    @property
    def seq_ids(self) -> npt.NDArray[np.int64] | None:
        return self._seq_ids

    def release(self) -> None:
        """Free the current batch's sequences (their blocks go back to the
        pool, or to the prefix cache)."""
        if self._seq_ids is not None:
            self.kv.free_sequences(self._seq_ids)
            self._seq_ids = None

    # -- what transformers calls -----------------------------------------------

    def stage(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Record the step's keys and values of `layer` for its attention."""
        # Every staged layer is consumed by its attention before the next
        # layer stages: anything left means another attention ran.
        self._check_no_pending()
        if self._seq_ids is None:
            start = self._next_seq_id
            self.set_batch(np.arange(start, start + keys.shape[0]))
        assert self._seq_ids is not None
        if keys.shape[0] != self._seq_ids.size:
            raise ShapeError(
                f"the forward has {keys.shape[0]} rows, set_batch gave "
                f"{self._seq_ids.size} sequence ids"
            )
        if layer == 0:
            self._check_level()
        self._pending[layer] = _PendingLayer(keys, values)
        STAGING_CACHE.set(self)

    def _check_level(self) -> None:
        """A forward starts on sequences whose layers all hold the same
        tokens: one interrupted midway (an exception after some layers had
        appended) left the first layers a step ahead, and continuing would
        attend over misaligned layers."""
        assert self._seq_ids is not None
        known = set(self.kv.seq_ids)
        uneven = [
            int(i)
            for i in self._seq_ids
            if int(i) in known and np.ptp(self.kv.layer_lens(int(i))) != 0
        ]
        if uneven:
            raise SequenceError(
                f"sequences {uneven} were left half-appended by an interrupted "
                "forward (some layers hold one step more): free them "
                "(PagedKVCache.free_sequences) and start them again"
            )

    def abort_step(self) -> None:
        """Forget what the forward in progress staged (it failed)."""
        self._pending.clear()
        STAGING_CACHE.set(None)

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        keys: torch.Tensor,
        options: AttentionOptions,
    ) -> torch.Tensor:
        """Append `layer`'s staged keys/values and attend with `query`
        (``[batch, Hq, T, D]``); returns ``[batch, T, Hq, D]``."""
        pending = self._pending.pop(layer, None)
        STAGING_CACHE.set(None)
        if pending is None or pending.keys is not keys:
            raise ConfigError(
                f"attention of layer {layer} got keys that LlmirCache did not "
                "stage: pass cache=LlmirCache(...) with "
                "attn_implementation='llmir'"
            )
        assert self._seq_ids is not None
        element = self.kv.element_type
        tokens = None
        if self._token_ids is not None and self.kv.prefix_caching:
            tokens = self._token_ids
        out = self.step(
            self.kv,
            layer,
            query_array(query),
            kv_array(pending.keys, element),
            kv_array(pending.values, element),
            self._seq_ids,
            tokens,
            options,
        )
        return as_tensor(out, query)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if self._seq_ids is None or self._seq_ids.size == 0:
            return 0
        known = set(self.kv.seq_ids)
        return max(
            (self.kv.seq_len(int(i)) for i in self._seq_ids if int(i) in known),
            default=0,
        )

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.kv.max_seq_len

    def reset(self) -> None:
        self._pending.clear()
        self._seq_ids = None
        self.kv.reset()

    def crop(self, tokens_to_remove: int) -> None:
        raise ConfigError("LlmirCache cannot crop sequences (assisted decoding)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise ConfigError(
            "LlmirCache does not repeat rows; fork sequences with PagedKVCache.fork"
        )

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise ConfigError("LlmirCache does not select rows; set_batch instead")

    def _check_no_pending(self) -> None:
        if self._pending:
            layers = sorted(self._pending)
            self._pending.clear()
            raise ConfigError(
                f"layers {layers} staged keys that no llmir attention consumed: "
                "load the model with attn_implementation='llmir'"
            )
