"""
Op interfaces of the `llm` dialect, as abstract mixins on the op classes.

Passes query ops through these instead of matching concrete op classes, so a
new cache op (a quantized append, a `free_sequence`) only has to implement
them to be understood by the statistics and verification passes.
"""

from __future__ import annotations

import abc
from collections.abc import Set as AbstractSet

from xdsl.ir import Operation, SSAValue
from xdsl.traits import EffectInstance, MemoryEffect, MemoryEffectKind

from llmir.dialects.llm_type import PagedKVCacheType


class KVCacheInterface(abc.ABC):
    """An op that creates, reads or writes a paged KV cache."""

    @abc.abstractmethod
    def get_cache(self) -> SSAValue:
        """The cache this op acts on: its cache operand, or the created cache."""
        raise NotImplementedError()

    def get_cache_type(self) -> PagedKVCacheType:
        cache_type = self.get_cache().type
        assert isinstance(cache_type, PagedKVCacheType)
        return cache_type

    @abc.abstractmethod
    def get_updated_cache(self) -> SSAValue | None:
        """The new version of the cache this op produces, if it writes one."""
        raise NotImplementedError()

    def writes_cache(self) -> bool:
        """Whether this op writes the cache contents."""
        return self.get_updated_cache() is not None

    def allocates_cache(self) -> bool:
        """Whether this op brings a new cache into existence."""
        return False

    def get_appended_tokens(self) -> int | None:
        """Tokens this op appends (batch * T), 0 if it appends none, None if dynamic."""
        return 0

    def get_layer(self) -> int | None:
        """The layer this op addresses, None if it is layer-independent."""
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
    def get_num_kv_heads(self) -> int:
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
    def get_max_kv_len(self) -> int:
        """Upper bound on cached tokens one sequence attends to."""
        raise NotImplementedError()


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
