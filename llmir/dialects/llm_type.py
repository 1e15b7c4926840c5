"""
The `!llm.paged_kv_cache` type: the static geometry of one paged KV cache.

Syntax (bare integers, in this order):

```mlir
!llm.paged_kv_cache<E, L, H, D, B, S>
!llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>
```

E element type (one of the registry `llmir.runtime.dtypes`), L layers, H kv
heads, D head_dim, B block_size (tokens per block), S max_seq_len (tokens per
sequence).  `PagedKVCacheType.geometry` is the runtime's `CacheGeometry` of
the type: the pool layout (`[L, num_blocks, H, 2, B, D]`), bytes per block
and per token come from there and nowhere else.  The number of blocks is not
part of the type; `llm.create_kv_cache` chooses it.
"""

from __future__ import annotations

from collections.abc import Sequence

from xdsl.dialects.builtin import IntAttr, f16, f32
from xdsl.ir import Attribute, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import irdl_attr_definition
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

from llmir.errors import ConfigError
from llmir.runtime.dtypes import ElementType, element_type_of_ir, supported_names
from llmir.runtime.geometry import INT32_MAX, CacheGeometry


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@irdl_attr_definition
class PagedKVCacheType(ParametrizedAttribute, TypeAttribute):
    """
    A paged KV cache: per layer, a pool of fixed-size blocks of keys and values.

    Sequences own lists of blocks (their block tables); token `p` of a sequence
    lives in block `table[p // B]` at slot `p % B`.

    ```mlir
    !llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>
    ```
    """

    name = "llm.paged_kv_cache"

    element_type_attr: Attribute
    num_layers_attr: IntAttr
    num_heads_attr: IntAttr
    head_dim_attr: IntAttr
    block_size_attr: IntAttr
    max_seq_len_attr: IntAttr

    def __init__(
        self,
        element_type: Attribute,
        num_layers: int | IntAttr,
        num_heads: int | IntAttr,
        head_dim: int | IntAttr,
        block_size: int | IntAttr,
        max_seq_len: int | IntAttr,
    ):
        def as_int_attr(value: int | IntAttr) -> IntAttr:
            return value if isinstance(value, IntAttr) else IntAttr(value)

        super().__init__(
            element_type,
            as_int_attr(num_layers),
            as_int_attr(num_heads),
            as_int_attr(head_dim),
            as_int_attr(block_size),
            as_int_attr(max_seq_len),
        )

    # Accessors used by the verifiers, the lowering and the interpreter.
    @property
    def element_type(self) -> Attribute:
        return self.element_type_attr

    @property
    def num_layers(self) -> int:
        return self.num_layers_attr.data

    @property
    def num_heads(self) -> int:
        return self.num_heads_attr.data

    @property
    def head_dim(self) -> int:
        return self.head_dim_attr.data

    @property
    def block_size(self) -> int:
        return self.block_size_attr.data

    @property
    def max_seq_len(self) -> int:
        return self.max_seq_len_attr.data

    @property
    def cache_element_type(self) -> ElementType:
        """The registry entry of the element type (the type is verified)."""
        element = element_type_of_ir(self.element_type)
        assert element is not None, "a verified type names a registered element"
        return element

    @property
    def data_element_types(self) -> tuple[Attribute, ...]:
        """The element types tensors of keys, values, queries and lookups
        of this cache may have: f32 or the cache's own, and for a quantized
        cache (whose codes are no tensor type) f32 or f16."""
        element = element_type_of_ir(self.element_type)
        if element is None or element.quant is None:
            return (f32, self.element_type)
        return (f32, f16)

    @property
    def default_data_element_type(self) -> Attribute:
        """What a lookup returns unless asked: the cache's element type, or
        f32 for a quantized cache."""
        quantized = self.cache_element_type.quant is not None
        return self.data_element_types[0 if quantized else 1]

    @property
    def geometry(self) -> CacheGeometry:
        """The runtime geometry of this (verified) type."""
        return CacheGeometry(
            self.cache_element_type,
            self.num_layers,
            self.num_heads,
            self.head_dim,
            self.block_size,
            self.max_seq_len,
        )

    @property
    def max_blocks_per_seq(self) -> int:
        """Blocks one sequence of `max_seq_len` tokens needs."""
        return self.geometry.max_blocks_per_seq

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token occupies in one layer: its key and value, all heads."""
        return self.geometry.bytes_per_token

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        with parser.in_angle_brackets():
            element_type = parser.parse_type()
            sizes: list[IntAttr] = []
            for _ in range(5):
                parser.parse_punctuation(",")
                sizes.append(IntAttr(parser.parse_integer(allow_boolean=False)))
        return (element_type, *sizes)

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string("<")
        printer.print_attribute(self.element_type)
        for size in (
            self.num_layers,
            self.num_heads,
            self.head_dim,
            self.block_size,
            self.max_seq_len,
        ):
            printer.print_string(f", {size}")
        printer.print_string(">")

    def verify(self) -> None:
        if element_type_of_ir(self.element_type) is None:
            raise VerifyException(
                f"paged_kv_cache element type must be {supported_names()}, "
                f"got {self.element_type}"
            )
        element = element_type_of_ir(self.element_type)
        if element is not None and element.quant is not None:
            errors = element.quant.layout_errors(self.head_dim, self.block_size)
            if errors:
                raise VerifyException(
                    f"paged_kv_cache of {element.name}: {'; '.join(errors)}"
                )
        for label, value in (
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("head_dim", self.head_dim),
            ("block_size", self.block_size),
            ("max_seq_len", self.max_seq_len),
        ):
            if not 1 <= value <= INT32_MAX:
                raise VerifyException(
                    f"paged_kv_cache {label} must be in [1, {INT32_MAX}], got {value}"
                )
        # Power-of-two blocks make `p // B` and `p % B` a shift and a mask in
        # every kernel.
        if not is_power_of_two(self.block_size):
            raise VerifyException(
                f"paged_kv_cache block_size must be a power of two, "
                f"got {self.block_size}"
            )
        # A multiple makes every full-length sequence fill whole blocks, so the
        # block-table width is exactly S / B with no partially usable block.
        if self.max_seq_len % self.block_size != 0:
            raise VerifyException(
                f"paged_kv_cache max_seq_len {self.max_seq_len} must be a multiple "
                f"of block_size {self.block_size}"
            )
        # The geometry checks what the IR alone cannot: one block's bytes fit
        # in int64, so every pass can do byte arithmetic in i64.
        try:
            self.geometry  # noqa: B018
        except ConfigError as e:
            raise VerifyException(f"paged_kv_cache: {e}") from e
