"""
The `!llm.paged_kv_cache` type: the static geometry of one paged KV cache.

Syntax (bare integers, in this order):

```mlir
!llm.paged_kv_cache<E, L, H, D, B, S>
!llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>
```

E element type, L layers, H kv heads, D head_dim, B block_size (tokens per
block), S max_seq_len (tokens per sequence).  The pool it describes has the
layout of `llmir.runtime.layout` (`[L, num_blocks, H, 2, B, D]`); the number of
blocks is not part of the type, it is chosen by `llm.create_kv_cache`.
"""

from __future__ import annotations

from collections.abc import Sequence

from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    IntAttr,
)
from xdsl.ir import Attribute, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import irdl_attr_definition
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

# Storage width in bits of every supported element type.  This is the ONE place
# that decides which element types a cache may hold: the quantized forms (i8,
# i4 with their scales) are added here when their runtime support lands.
_ELEMENT_BITWIDTHS: dict[type[Attribute], int] = {
    Float32Type: 32,
    Float16Type: 16,
    BFloat16Type: 16,
}

SUPPORTED_ELEMENT_TYPES_TEXT = "f32, f16 or bf16"


def element_bitwidth(element_type: Attribute) -> int | None:
    """Storage bits per element of `element_type`, None if unsupported."""
    return _ELEMENT_BITWIDTHS.get(type(element_type))


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
    def max_blocks_per_seq(self) -> int:
        """Blocks one sequence of `max_seq_len` tokens needs (S is a multiple of B)."""
        return self.max_seq_len // self.block_size

    @property
    def element_bitwidth(self) -> int:
        bits = element_bitwidth(self.element_type)
        assert bits is not None, "verified type has a supported element type"
        return bits

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token occupies in one layer: its key and its value, all heads."""
        return 2 * self.num_heads * self.head_dim * self.element_bitwidth // 8

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
        if element_bitwidth(self.element_type) is None:
            raise VerifyException(
                f"paged_kv_cache element type must be {SUPPORTED_ELEMENT_TYPES_TEXT}, "
                f"got {self.element_type}"
            )
        for label, value in (
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("head_dim", self.head_dim),
            ("block_size", self.block_size),
            ("max_seq_len", self.max_seq_len),
        ):
            if value <= 0:
                raise VerifyException(
                    f"paged_kv_cache {label} must be positive, got {value}"
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
