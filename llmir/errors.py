"""The one exception hierarchy of llmir.

Every error the runtime raises on bad input derives from `LLMIRError`, and
each is raised *before* anything is mutated: a rejected call leaves the cache
exactly as it was.  Messages name the offending value and the limit it broke,
e.g. ``sequence 7 would grow to 4100 tokens, max_seq_len is 4096``.

Where a built-in exception type is the natural one for callers to catch
(`ValueError` for a malformed argument, `KeyError` for an unknown id,
`MemoryError` for an exhausted pool) the llmir class also derives from it.
"""

from __future__ import annotations


class LLMIRError(Exception):
    """Base class of every error raised by llmir."""


class ConfigError(LLMIRError, ValueError):
    """A cache or kernel was configured with impossible parameters."""


class ShapeError(LLMIRError, ValueError):
    """A tensor's rank, shape or head count does not match the cache."""


class DTypeError(LLMIRError, TypeError):
    """A tensor's element type is not one the cache or kernel accepts."""


class NonFiniteError(LLMIRError, ValueError):
    """Keys or values a cache cannot hold: an inf or a NaN given to a
    quantized cache, whose block scales come from the values' range."""


class SequenceError(LLMIRError, ValueError):
    """A sequence id is invalid in this call (e.g. repeated in one batch)."""


class UnknownSequenceError(SequenceError, KeyError):
    """A sequence id that the cache does not hold."""

    def __str__(self) -> str:
        # KeyError would quote the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class SequenceTooLongError(SequenceError):
    """A sequence would grow past max_seq_len."""


class BlockTableError(LLMIRError, ValueError):
    """A block table holds out-of-range indices or does not cover seq_lens."""


class AllocatorError(LLMIRError):
    """Misuse of the block allocator (double free, unknown block)."""


class DoubleFreeError(AllocatorError):
    """A block was released more often than it was referenced."""


class UnknownBlockError(AllocatorError, IndexError):
    """A block id outside the pool."""


class OutOfBlocksError(AllocatorError, MemoryError):
    """The pool has fewer free blocks than a request needs."""


class PoolTooLargeError(ConfigError, MemoryError):
    """A pool (or an argument) would not fit in its device's memory."""


class DeviceError(LLMIRError, RuntimeError):
    """The requested device is unavailable (e.g. CUDA without a GPU)."""


class ShardError(LLMIRError, RuntimeError):
    """A shard of a distributed cache failed (died, hung past its timeout,
    or raised); the cache must be closed and rebuilt."""


class SwapSpaceFullError(LLMIRError, MemoryError):
    """The swap space has fewer free slots than a swap-out needs."""


class SequenceSwappedError(SequenceError):
    """A swapped-out sequence was used before it was swapped back in."""
