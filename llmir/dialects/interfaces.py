"""
Op interfaces of the `llm` dialect, as abstract mixins on the op classes.

Passes reason about ops only through these, never by matching op classes,
so a new cache op (a quantized append, a fork) is understood by every pass
once it implements them:

- `llm-verify-kv-cache` uses `get_cache` / `writes_cache`;
- `llm-kv-cache-stats` uses the token counts, `get_cache_type` and the
  attention geometry;
- `convert-llm-to-func` (through `llmir.abi`) reads `get_layer`,
  `get_scale`, `is_causal`, `get_sliding_window`, `get_logits_soft_cap`, and
  replaces each op's `get_updated_cache` with the cache it wrote (after
  lowering the cache is one mutable runtime object).

`KVCacheInterface` carries the memory-effect trait, so an op gets its
effects by implementing the interface.
"""

from __future__ import annotations

import abc
from collections.abc import Set as AbstractSet

from xdsl.ir import Operation, SSAValue
from xdsl.irdl import traits_def
from xdsl.traits import EffectInstance, MemoryEffect, MemoryEffectKind

from llmir.dialects.llm_type import PagedKVCacheType


class KVCacheMemoryEffect(MemoryEffect):
    """
    Memory effects of a `KVCacheInterface` op, tied to its cache value.

    Creating allocates; every other cache op reads the cache (its block tables
    at least), and an op that writes also writes it.
    """

    @classmethod
    def get_effects(cls, op: Operation) -> AbstractSet[EffectInstance] | None:
        if not isinstance(op, KVCacheInterface):
            return None
        cache = op.get_cache()
        if op.allocates_cache():
            return frozenset((EffectInstance(MemoryEffectKind.ALLOC, cache),))
        effects = {EffectInstance(MemoryEffectKind.READ, cache)}
        if op.writes_cache():
            effects.add(EffectInstance(MemoryEffectKind.WRITE, cache))
        return frozenset(effects)


class KVCacheInterface(abc.ABC):
    """An op that creates, reads or writes a paged KV cache."""

    traits = traits_def(KVCacheMemoryEffect())

    @abc.abstractmethod
    def get_cache(self) -> SSAValue:
        """The cache this op acts on: its cache operand, or the created cache."""
        raise NotImplementedError()

    def get_cache_type(self) -> PagedKVCacheType:
        cache_type = self.get_cache().type
        assert isinstance(cache_type, PagedKVCacheType)
        return cache_type

    def get_updated_cache(self) -> SSAValue | None:
        """The new version of the cache this op produces, if it writes one."""
        return None

    def writes_cache(self) -> bool:
        """Whether this op writes the cache contents."""
        return self.get_updated_cache() is not None

    def allocates_cache(self) -> bool:
        """Whether this op brings a new cache into existence."""
        return False

    def get_appended_tokens(self) -> int | None:
        """Tokens this op appends (batch * T), 0 if it appends none, None if
        dynamic."""
        return 0

    def get_tokens_read(self) -> int | None:
        """Upper bound on the tokens (of one layer) whose keys and values this
        op reads, 0 if it reads none, None if dynamic."""
        return 0

    def get_layer(self) -> int | None:
        """The layer this op addresses, None if it is layer-independent."""
        return None

    def get_num_blocks(self) -> int | None:
        """The pool size of the cache this op creates, None for other ops."""
        return None


class AttentionInterface(abc.ABC):
    """An op computing attention of new queries against cached keys/values."""

    @abc.abstractmethod
    def get_batch_size(self) -> int | None:
        """Sequences in the batch, None if dynamic."""
        raise NotImplementedError()

    @abc.abstractmethod
    def get_query_len(self) -> int | None:
        """New tokens per sequence (1 for decode), None if dynamic."""
        raise NotImplementedError()

    @abc.abstractmethod
    def get_num_query_heads(self) -> int:
        raise NotImplementedError()

    @abc.abstractmethod
    def get_head_dim(self) -> int:
        raise NotImplementedError()

    @abc.abstractmethod
    def get_scale(self) -> float:
        """The softmax scale actually used (the default is 1/sqrt(head_dim))."""
        raise NotImplementedError()

    @abc.abstractmethod
    def is_causal(self) -> bool:
        raise NotImplementedError()

    @abc.abstractmethod
    def get_sliding_window(self) -> int | None:
        """Keys each query may see (itself included), None for all."""
        raise NotImplementedError()

    def get_sink_tokens(self) -> int | None:
        """Attention sinks beside the window (keys below this position are
        seen too), None for none."""
        return None

    @abc.abstractmethod
    def get_logits_soft_cap(self) -> float | None:
        """The soft cap of the logits, None for none."""
        raise NotImplementedError()

    @abc.abstractmethod
    def get_max_kv_len(self) -> int:
        """Upper bound on cached tokens one sequence attends to."""
        raise NotImplementedError()
