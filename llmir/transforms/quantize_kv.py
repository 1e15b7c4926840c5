"""
`llm-quantize-kv`: store a module's KV caches quantized, leaving the program
otherwise unchanged.

    xdsl-opt prog.mlir -p 'llm-quantize-kv{type=i8}'
    xdsl-opt prog.mlir -p 'llm-quantize-kv{type=i4}'

Every ``!llm.paged_kv_cache`` type of the module becomes the same type with
element type `type` (``i8`` or ``i4``, the quantized entries of the element
type registry; their scheme is `llmir.runtime.quantization`'s) wherever it
appears: ops, function signatures, loop values.  Nothing else changes: the
tensors of keys, values, queries and lookups keep their element types, and a
quantized cache takes f32 and f16 tensors, so a module whose caches receive
bf16 tensors cannot be converted, and the pass fails naming the op.  So
does a cache whose head_dim or block size the scheme cannot hold (i4 needs
a head_dim that is a multiple of 32: value groups of 16 in each half of a
row; both need a power-of-two block size).
Running the pass again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin
from xdsl.dialects.builtin import TensorType
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriteWalker
from xdsl.utils.exceptions import PassFailedException

from llmir.dialects.llm_type import PagedKVCacheType
from llmir.runtime.dtypes import ELEMENT_TYPES
from llmir.transforms.cache_types import RetypeCache, cache_types

QUANTIZED = {name: t for name, t in ELEMENT_TYPES.items() if t.quant is not None}


@dataclass(frozen=True)
class QuantizeKVPass(ModulePass):
    """Switches every cache of the module to a quantized element type
    (module docstring)."""

    name = "llm-quantize-kv"

    type: str = "i8"

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        target = QUANTIZED.get(self.type)
        if target is None:
            raise PassFailedException(
                f"{self.name}: type must be one of {', '.join(QUANTIZED)}, "
                f"got {self.type!r}"
            )
        quant = target.quant
        assert quant is not None
        rewrites: list[tuple[PagedKVCacheType, PagedKVCacheType]] = []
        for cache in cache_types(op):
            if cache.element_type == target.ir_type:
                continue
            errors = quant.layout_errors(cache.head_dim, cache.block_size)
            if errors:
                raise PassFailedException(
                    f"{self.name}: {cache} cannot be stored as {target.name}: "
                    + "; ".join(errors)
                )
            self._check_data_tensors(op, cache)
            rewrites.append(
                (
                    cache,
                    PagedKVCacheType(
                        target.ir_type,
                        cache.num_layers,
                        cache.num_heads,
                        cache.head_dim,
                        cache.block_size,
                        cache.max_seq_len,
                    ),
                )
            )
        for old, new in rewrites:
            PatternRewriteWalker(RetypeCache(old, new)).rewrite_module(op)

    def _check_data_tensors(
        self, module: builtin.ModuleOp, cache: PagedKVCacheType
    ) -> None:
        """Every float tensor of an op on `cache` must be f32 or f16."""
        allowed = {"f32", "f16"}
        for inner in module.walk():
            types = [v.type for v in (*inner.operands, *inner.results)]
            if cache not in types:
                continue
            for typ in types:
                if not isinstance(typ, TensorType):
                    continue
                element = str(typ.get_element_type())
                if element.startswith(("f", "bf")) and element not in allowed:
                    raise PassFailedException(
                        f"{self.name}: {inner.name} passes {typ} to {cache}; a "
                        "quantized cache takes f32 or f16 tensors"
                    )
