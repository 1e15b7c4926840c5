"""
The `llm` dialect: a paged KV cache and the attention that reads it.

A cache value of type `!llm.paged_kv_cache<E, L, H, D, B, S>` is created once,
then threaded through the program in SSA form: `llm.append_kv` returns the new
version of the cache, which later ops must use.  The geometry is in the type;
the number of blocks in the pool is chosen by `llm.create_kv_cache`.

Keys, values and queries are `[batch, T, heads, head_dim]` tensors whose element
type is f32 or the cache's element type (the runtime converts on store/load).
Batch, token and block-table widths may be dynamic (`?`); heads and head_dim
must be static.  Sequence ids, block tables and sequence lengths are i32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    I32,
    I64,
    BoolAttr,
    Float32Type,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    f32,
    i32,
    i64,
)
from xdsl.ir import Attribute, Dialect, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    opt_prop_def,
    prop_def,
    result_def,
)
from xdsl.utils.exceptions import VerifyException

from llmir.dialects.interfaces import AttentionInterface, KVCacheInterface
from llmir.dialects.llm_checks import (
    at_most,
    batch_times_tokens,
    cache_type_of,
    check_data_element_type,
    check_keys_and_values,
    check_layer,
    check_optional_geometry,
    check_table_and_lens,
    dims_agree,
    i32_attr_or_none,
    i32_tensor,
    ranked_tensor,
    same_cache_type,
    static_dim,
)
from llmir.dialects.llm_type import PagedKVCacheType
from llmir.errors import ConfigError
from llmir.runtime.eviction import POLICIES
from llmir.runtime.geometry import INT32_MAX
from llmir.runtime.options import HEAVY_HITTER_SCORES
from llmir.runtime.validation import (
    check_scale,
    check_sinks,
    check_soft_cap,
    check_window,
)

__all__ = [
    "LLM",
    "AppendKVOp",
    "BlockTableOp",
    "CreateKVCacheOp",
    "ForkSequenceOp",
    "FreeSequenceOp",
    "LookupKVOp",
    "MatchPrefixOp",
    "PagedAttentionOp",
    "PagedKVCacheType",
    "ReserveSlotsOp",
    "SwapInOp",
    "SwapOutOp",
    "WriteKVOp",
]

_FUNCTIONAL_FORMAT = "operands attr-dict `:` functional-type(operands, results)"

# Attributes are properties, written in the attribute dictionary as the seed
# writes them (`{layer = 1 : i32}`); a property at its default is not printed.
_OPTIONS = (ParsePropInAttrDict(),)
_LAYER_DEFAULT = IntegerAttr(0, i32)
_CAUSAL_DEFAULT = BoolAttr.from_bool(True)
_PREFIX_CACHING_DEFAULT = BoolAttr.from_bool(False)
_EVICTION_DEFAULT = StringAttr("lru")
_SWAP_BLOCKS_DEFAULT = IntegerAttr(0, i64)
_HEAVY_HITTER_SCORE_DEFAULT = StringAttr("mean")


# --- ops -----------------------------------------------------------------------


@irdl_op_definition
class CreateKVCacheOp(KVCacheInterface, IRDLOperation):
    """
    Creates an empty paged KV cache with a pool of `num_blocks` blocks per layer.

    `prefix_caching` (default false) indexes full blocks by their tokens so
    that `llm.match_prefix` can reuse them; `eviction` (default "lru", or
    "priority") orders cached blocks for reuse when the pool runs out;
    `swap_blocks` (default 0) gives the cache a swap tier of that many block
    slots for `llm.swap_out` / `llm.swap_in`.  `window_tokens` (optional)
    prunes every sequence to its last `window_tokens` tokens and its first
    `sink_tokens` (optional, StreamingLLM's attention sinks), giving the
    blocks wholly between back to the pool as the sequence grows; attention
    over it then needs `sliding_window <= window_tokens` and `sink_tokens`
    at most the cache's.  `heavy_hitter_blocks` (optional, with
    `window_tokens`) keeps each sequence within that many blocks instead,
    giving back the blocks outside the sinks and the window that attention
    weighed least (H2O by blocks; `heavy_hitter_score`, "mean" or "sum",
    says how a block is weighed); attention then skips the holes.

    ```mlir
    %kv = llm.create_kv_cache {num_blocks = 512 : i64, prefix_caching = true}
        : !llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>
    ```
    """

    name = "llm.create_kv_cache"

    num_blocks_attr = prop_def(IntegerAttr[I64], prop_name="num_blocks")
    prefix_caching_attr = prop_def(
        BoolAttr, _PREFIX_CACHING_DEFAULT, prop_name="prefix_caching"
    )
    eviction_attr = prop_def(StringAttr, _EVICTION_DEFAULT, prop_name="eviction")
    swap_blocks_attr = prop_def(
        IntegerAttr[I64], _SWAP_BLOCKS_DEFAULT, prop_name="swap_blocks"
    )
    window_tokens_attr = opt_prop_def(IntegerAttr[I64], prop_name="window_tokens")
    sink_tokens_attr = opt_prop_def(IntegerAttr[I64], prop_name="sink_tokens")
    heavy_hitter_blocks_attr = opt_prop_def(
        IntegerAttr[I64], prop_name="heavy_hitter_blocks"
    )
    heavy_hitter_score_attr = prop_def(
        StringAttr, _HEAVY_HITTER_SCORE_DEFAULT, prop_name="heavy_hitter_score"
    )

    cache = result_def(PagedKVCacheType)

    irdl_options = _OPTIONS
    assembly_format = "attr-dict `:` type($cache)"

    def __init__(
        self,
        cache_type: PagedKVCacheType,
        num_blocks: int,
        *,
        prefix_caching: bool = False,
        eviction: str = "lru",
        swap_blocks: int = 0,
        window_tokens: int | None = None,
        sink_tokens: int | None = None,
        heavy_hitter_blocks: int | None = None,
        heavy_hitter_score: str = "mean",
    ):
        properties: dict[str, Attribute | None] = {
            "num_blocks": IntegerAttr(num_blocks, i64),
            "prefix_caching": BoolAttr.from_bool(True) if prefix_caching else None,
            "eviction": None if eviction == "lru" else StringAttr(eviction),
            "swap_blocks": IntegerAttr(swap_blocks, i64) if swap_blocks else None,
            "window_tokens": None
            if window_tokens is None
            else IntegerAttr(window_tokens, i64),
            "sink_tokens": None
            if sink_tokens is None
            else IntegerAttr(sink_tokens, i64),
            "heavy_hitter_blocks": None
            if heavy_hitter_blocks is None
            else IntegerAttr(heavy_hitter_blocks, i64),
            "heavy_hitter_score": None
            if heavy_hitter_score == "mean"
            else StringAttr(heavy_hitter_score),
        }
        super().__init__(result_types=[cache_type], properties=_present(properties))

    @property
    def num_blocks(self) -> int:
        return self.num_blocks_attr.value.data

    @property
    def prefix_caching(self) -> bool:
        return bool(self.prefix_caching_attr.value.data)

    @property
    def eviction(self) -> str:
        return self.eviction_attr.data

    @property
    def swap_blocks(self) -> int:
        return self.swap_blocks_attr.value.data

    @property
    def window_tokens(self) -> int | None:
        attr = self.window_tokens_attr
        return None if attr is None else attr.value.data

    @property
    def sink_tokens(self) -> int | None:
        attr = self.sink_tokens_attr
        return None if attr is None else attr.value.data

    @property
    def heavy_hitter_blocks(self) -> int | None:
        attr = self.heavy_hitter_blocks_attr
        return None if attr is None else attr.value.data

    @property
    def heavy_hitter_score(self) -> str:
        return self.heavy_hitter_score_attr.data

    def verify_(self) -> None:
        if self.num_blocks <= 0:
            raise VerifyException(
                f"llm.create_kv_cache: num_blocks must be positive, "
                f"got {self.num_blocks}"
            )
        if not 0 <= self.swap_blocks <= INT32_MAX:
            raise VerifyException(
                f"llm.create_kv_cache: swap_blocks must be in [0, {INT32_MAX}], "
                f"got {self.swap_blocks}"
            )
        if self.eviction not in POLICIES:
            raise VerifyException(
                f"llm.create_kv_cache: unknown eviction policy "
                f'"{self.eviction}", expected one of {", ".join(POLICIES)}'
            )
        max_seq_len = cache_type_of(self.cache).max_seq_len
        for name, count in (
            ("window_tokens", self.window_tokens),
            ("sink_tokens", self.sink_tokens),
        ):
            if count is not None and not 1 <= count <= max_seq_len:
                raise VerifyException(
                    f"llm.create_kv_cache: {name} must be in [1, max_seq_len "
                    f"{max_seq_len}], got {count}"
                )
        for name, count in (
            ("sink_tokens", self.sink_tokens),
            ("heavy_hitter_blocks", self.heavy_hitter_blocks),
        ):
            if count is not None and self.window_tokens is None:
                raise VerifyException(
                    f"llm.create_kv_cache: {name} needs window_tokens (without a "
                    "window nothing is pruned)"
                )
        if self.heavy_hitter_score not in HEAVY_HITTER_SCORES:
            raise VerifyException(
                f"llm.create_kv_cache: unknown heavy_hitter_score "
                f'"{self.heavy_hitter_score}", expected one of '
                f"{', '.join(HEAVY_HITTER_SCORES)}"
            )
        budget = self.heavy_hitter_blocks
        if budget is not None and self.window_tokens is not None:
            block = cache_type_of(self.cache).block_size
            least = (
                -(-(self.sink_tokens or 0) // block)
                + -(-self.window_tokens // block)
                + 1
            )
            if budget < least:
                raise VerifyException(
                    f"llm.create_kv_cache: heavy_hitter_blocks {budget} is below "
                    f"the {least} blocks the sinks and the window need"
                )

    # KVCacheInterface
    def get_cache(self) -> SSAValue:
        return self.cache

    def allocates_cache(self) -> bool:
        return True

    def get_num_blocks(self) -> int | None:
        return self.num_blocks


@irdl_op_definition
class AppendKVOp(KVCacheInterface, IRDLOperation):
    """
    Appends `T` new tokens' keys and values to each sequence of the batch.

    `keys`/`values` are `[batch, T, H, D]`, `seq_ids` is `[batch]` i32.  Results
    are the new version of the cache and, for each appended token, the physical
    block it was written to (`[batch, T]` i32).  `layer` (default 0) selects the
    layer; `block_size`/`max_seq_len` are optional and must match the type.
    An optional fifth operand, `token_ids` (`[batch, T]` i32), names the
    tokens stored: a cache with `prefix_caching` indexes the blocks they fill.

    ```mlir
    !kv_cache_t = !llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>
    %new_kv, %block_indices = llm.append_kv %kv_cache, %keys, %values, %seq_ids {
      block_size = 16 : i32,
      max_seq_len = 4096 : i32
    } : (!kv_cache_t, tensor<2x1x16x64xf16>, tensor<2x1x16x64xf16>, tensor<2xi32>)
        -> (!kv_cache_t, tensor<2x1xi32>)
    ```
    """

    name = "llm.append_kv"

    cache = operand_def(PagedKVCacheType)
    keys = operand_def(TensorType)
    values = operand_def(TensorType)
    seq_ids = operand_def(TensorType)
    token_ids = opt_operand_def(TensorType)

    layer_attr = prop_def(IntegerAttr[I32], _LAYER_DEFAULT, prop_name="layer")
    block_size_attr = opt_prop_def(IntegerAttr[I32], prop_name="block_size")
    max_seq_len_attr = opt_prop_def(IntegerAttr[I32], prop_name="max_seq_len")

    new_cache = result_def(PagedKVCacheType)
    block_indices = result_def(TensorType)

    irdl_options = _OPTIONS
    assembly_format = _FUNCTIONAL_FORMAT

    def __init__(
        self,
        cache: SSAValue,
        keys: SSAValue,
        values: SSAValue,
        seq_ids: SSAValue,
        token_ids: SSAValue | None = None,
        *,
        layer: int | None = None,
        with_geometry: bool = False,
    ):
        """`with_geometry` also records block_size/max_seq_len, as the seed does."""
        cache_type = cache.type
        keys_type = keys.type
        assert isinstance(cache_type, PagedKVCacheType)
        assert isinstance(keys_type, TensorType)
        batch, tokens = keys_type.get_shape()[:2]
        properties: dict[str, Attribute | None] = {"layer": i32_attr_or_none(layer)}
        if with_geometry:
            properties["block_size"] = i32_attr_or_none(cache_type.block_size)
            properties["max_seq_len"] = i32_attr_or_none(cache_type.max_seq_len)
        super().__init__(
            operands=[cache, keys, values, seq_ids, token_ids],
            result_types=[cache_type, TensorType(i32, [batch, tokens])],
            properties=_present(properties),
        )

    @property
    def layer(self) -> int:
        return self.layer_attr.value.data

    def verify_(self) -> None:
        op = self.name
        cache = same_cache_type(op, self.cache, self.new_cache)
        keys = check_keys_and_values(op, self.keys, self.values, cache)
        batch, tokens = keys.get_shape()[:2]
        at_most(op, "tokens per sequence", tokens, "max_seq_len", cache.max_seq_len)
        seq_ids = i32_tensor(op, "seq_ids", self.seq_ids.type, 1)
        dims_agree(op, "seq_ids batch", seq_ids.get_shape()[0], "keys batch", batch)
        if self.token_ids is not None:
            token_ids = i32_tensor(op, "token_ids", self.token_ids.type, 2)
            token_batch, token_count = token_ids.get_shape()
            dims_agree(op, "token_ids batch", token_batch, "keys batch", batch)
            dims_agree(op, "token_ids tokens", token_count, "keys tokens", tokens)
        indices = i32_tensor(op, "block_indices", self.block_indices.type, 2)
        index_batch, index_tokens = indices.get_shape()
        dims_agree(op, "block_indices batch", index_batch, "keys batch", batch)
        dims_agree(op, "block_indices tokens", index_tokens, "keys tokens", tokens)
        check_layer(op, self.layer, cache)
        check_optional_geometry(
            op, "block_size", self.block_size_attr, cache.block_size
        )
        check_optional_geometry(
            op, "max_seq_len", self.max_seq_len_attr, cache.max_seq_len
        )

    # KVCacheInterface
    def get_cache(self) -> SSAValue:
        return self.cache

    def get_updated_cache(self) -> SSAValue | None:
        return self.new_cache

    def get_appended_tokens(self) -> int | None:
        return batch_times_tokens(self.keys)

    def get_layer(self) -> int | None:
        return self.layer


@irdl_op_definition
class BlockTableOp(KVCacheInterface, IRDLOperation):
    """
    Reads the block tables and lengths of a batch of sequences.

    The table is `[batch, M]` i32, each row a sequence's physical blocks in
    order, padded with -1; `M` is at most `max_seq_len / block_size` (a sequence
    with more than `M` blocks is a runtime error).  Lengths are `[batch]` i32.

    ```mlir
    %table, %lens = llm.block_table %kv, %seq_ids
        : (!kv_cache_t, tensor<2xi32>) -> (tensor<2x128xi32>, tensor<2xi32>)
    ```
    """

    name = "llm.block_table"

    cache = operand_def(PagedKVCacheType)
    seq_ids = operand_def(TensorType)

    block_table = result_def(TensorType)
    seq_lens = result_def(TensorType)

    irdl_options = _OPTIONS
    assembly_format = _FUNCTIONAL_FORMAT

    def __init__(
        self, cache: SSAValue, seq_ids: SSAValue, max_blocks: int | None = None
    ):
        """`max_blocks` (the table width) defaults to max_seq_len / block_size."""
        cache_type = cache.type
        seq_ids_type = seq_ids.type
        assert isinstance(cache_type, PagedKVCacheType)
        assert isinstance(seq_ids_type, TensorType)
        (batch,) = seq_ids_type.get_shape()
        width = cache_type.max_blocks_per_seq if max_blocks is None else max_blocks
        super().__init__(
            operands=[cache, seq_ids],
            result_types=[TensorType(i32, [batch, width]), TensorType(i32, [batch])],
        )

    def verify_(self) -> None:
        op = self.name
        cache = cache_type_of(self.cache)
        seq_ids = i32_tensor(op, "seq_ids", self.seq_ids.type, 1)
        (batch,) = seq_ids.get_shape()
        table = i32_tensor(op, "block_table", self.block_table.type, 2)
        table_batch, width = table.get_shape()
        dims_agree(op, "block_table batch", table_batch, "seq_ids batch", batch)
        if width != DYNAMIC_INDEX and width < 1:
            raise VerifyException(f"{op}: block_table width must be positive")
        at_most(
            op,
            "block_table width",
            width,
            "max_seq_len / block_size",
            cache.max_blocks_per_seq,
        )
        lens = i32_tensor(op, "seq_lens", self.seq_lens.type, 1)
        dims_agree(op, "seq_lens batch", lens.get_shape()[0], "seq_ids batch", batch)

    # KVCacheInterface
    def get_cache(self) -> SSAValue:
        return self.cache


@irdl_op_definition
class LookupKVOp(KVCacheInterface, IRDLOperation):
    """
    Gathers one layer's cached keys and values into contiguous tensors.

    Results are `[batch, max_len, H, D]`, token `p < seq_lens[b]` of row `b` at
    `[b, p]`, the rest zero.  `max_len` is at most `max_seq_len`.

    ```mlir
    %k, %v = llm.lookup_kv %kv, %table, %lens {layer = 0 : i32}
        : (!kv_cache_t, tensor<2x128xi32>, tensor<2xi32>)
        -> (tensor<2x2048x16x64xf16>, tensor<2x2048x16x64xf16>)
    ```
    """

    name = "llm.lookup_kv"

    cache = operand_def(PagedKVCacheType)
    block_table = operand_def(TensorType)
    seq_lens = operand_def(TensorType)

    layer_attr = prop_def(IntegerAttr[I32], _LAYER_DEFAULT, prop_name="layer")

    keys = result_def(TensorType)
    values = result_def(TensorType)

    irdl_options = _OPTIONS
    assembly_format = _FUNCTIONAL_FORMAT

    def __init__(
        self,
        cache: SSAValue,
        block_table: SSAValue,
        seq_lens: SSAValue,
        *,
        max_len: int | None = None,
        layer: int | None = None,
        element_type: Attribute | None = None,
    ):
        """`max_len` defaults to the table's capacity (width * block_size),
        `element_type` to the cache's."""
        cache_type = cache.type
        table_type = block_table.type
        assert isinstance(cache_type, PagedKVCacheType)
        assert isinstance(table_type, TensorType)
        batch, width = table_type.get_shape()
        if max_len is None:
            max_len = (
                cache_type.max_seq_len
                if width == DYNAMIC_INDEX
                else width * cache_type.block_size
            )
        result_type = TensorType(
            cache_type.default_data_element_type
            if element_type is None
            else element_type,
            [batch, max_len, cache_type.num_heads, cache_type.head_dim],
        )
        super().__init__(
            operands=[cache, block_table, seq_lens],
            result_types=[result_type, result_type],
            properties=_present({"layer": i32_attr_or_none(layer)}),
        )

    @property
    def layer(self) -> int:
        return self.layer_attr.value.data

    def verify_(self) -> None:
        op = self.name
        cache = cache_type_of(self.cache)
        batch, _ = check_table_and_lens(op, self.block_table, self.seq_lens, cache)
        keys = check_keys_and_values(op, self.keys, self.values, cache)
        keys_batch, max_len = keys.get_shape()[:2]
        dims_agree(op, "keys batch", keys_batch, "block_table batch", batch)
        at_most(op, "keys length", max_len, "max_seq_len", cache.max_seq_len)
        check_layer(op, self.layer, cache)

    # KVCacheInterface
    def get_cache(self) -> SSAValue:
        return self.cache

    def get_layer(self) -> int | None:
        return self.layer

    def get_tokens_read(self) -> int | None:
        return batch_times_tokens(self.keys)


@irdl_op_definition
class PagedAttentionOp(KVCacheInterface, AttentionInterface, IRDLOperation):
    """
    Attention of new queries against one layer of the paged cache.

    `query` is `[batch, Tq, Hq, D]` with `Hq` a multiple of the cache's kv heads
    (GQA/MQA: query head `h` reads kv head `h // (Hq / H)`).  `Tq = 1` is decode;
    `Tq > 1` is (chunked) prefill: the new tokens are the last `Tq` of each
    sequence and, when `causal` (default true), token `i` sees cached tokens
    up to `seq_len - Tq + i`.  `scale` defaults to `1/sqrt(D)`; `num_heads`
    (query heads) and `head_dim` are optional and must match the types.
    As in vLLM and FlashInfer, `sliding_window = W` limits each query to the
    last `W` positions up to and including itself, and `logits_soft_cap = c`
    maps each logit `x` to `c * tanh(x / c)`; both are off when absent.
    `sink_tokens = S` (only beside a window) also shows every query the first
    `S` positions: StreamingLLM's attention sinks, what a cache created with
    `window_tokens`/`sink_tokens` keeps.

    ```mlir
    %out = llm.paged_attention %q, %kv, %table, %lens {
      num_heads = 16 : i32, head_dim = 64 : i32, scale = 0.125 : f32
    } : (tensor<2x1x16x64xf16>, !kv_cache_t, tensor<2x128xi32>, tensor<2xi32>)
        -> tensor<2x1x16x64xf16>
    ```
    """

    name = "llm.paged_attention"

    query = operand_def(TensorType)
    cache = operand_def(PagedKVCacheType)
    block_table = operand_def(TensorType)
    seq_lens = operand_def(TensorType)

    num_heads_attr = opt_prop_def(IntegerAttr[I32], prop_name="num_heads")
    head_dim_attr = opt_prop_def(IntegerAttr[I32], prop_name="head_dim")
    scale_attr = opt_prop_def(FloatAttr[Float32Type], prop_name="scale")
    layer_attr = prop_def(IntegerAttr[I32], _LAYER_DEFAULT, prop_name="layer")
    causal_attr = prop_def(BoolAttr, _CAUSAL_DEFAULT, prop_name="causal")
    sliding_window_attr = opt_prop_def(IntegerAttr[I32], prop_name="sliding_window")
    sink_tokens_attr = opt_prop_def(IntegerAttr[I32], prop_name="sink_tokens")
    logits_soft_cap_attr = opt_prop_def(
        FloatAttr[Float32Type], prop_name="logits_soft_cap"
    )

    output = result_def(TensorType)

    irdl_options = _OPTIONS
    assembly_format = _FUNCTIONAL_FORMAT

    def __init__(
        self,
        query: SSAValue,
        cache: SSAValue,
        block_table: SSAValue,
        seq_lens: SSAValue,
        *,
        scale: float | None = None,
        layer: int | None = None,
        causal: bool | None = None,
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
        sink_tokens: int | None = None,
        with_geometry: bool = False,
    ):
        """`with_geometry` also records num_heads/head_dim, as the seed does."""
        query_type = query.type
        assert isinstance(query_type, TensorType)
        properties: dict[str, Attribute | None] = {
            "scale": None if scale is None else FloatAttr(scale, f32),
            "layer": i32_attr_or_none(layer),
            "causal": None if causal is None else BoolAttr.from_bool(causal),
            "sliding_window": i32_attr_or_none(sliding_window),
            "sink_tokens": i32_attr_or_none(sink_tokens),
            "logits_soft_cap": None
            if logits_soft_cap is None
            else FloatAttr(logits_soft_cap, f32),
        }
        if with_geometry:
            _, _, heads, head_dim = query_type.get_shape()
            properties["num_heads"] = i32_attr_or_none(heads)
            properties["head_dim"] = i32_attr_or_none(head_dim)
        super().__init__(
            operands=[query, cache, block_table, seq_lens],
            result_types=[query_type],
            properties=_present(properties),
        )

    @property
    def layer(self) -> int:
        return self.layer_attr.value.data

    @property
    def causal(self) -> bool:
        return bool(self.causal_attr.value.data)

    @property
    def sliding_window(self) -> int | None:
        attr = self.sliding_window_attr
        return None if attr is None else attr.value.data

    @property
    def logits_soft_cap(self) -> float | None:
        attr = self.logits_soft_cap_attr
        return None if attr is None else attr.value.data

    @property
    def sink_tokens(self) -> int | None:
        attr = self.sink_tokens_attr
        return None if attr is None else attr.value.data

    @property
    def scale(self) -> float:
        if self.scale_attr is None:
            return 1.0 / math.sqrt(self.get_head_dim())
        return self.scale_attr.value.data

    def _query_shape(self) -> Sequence[int]:
        query_type = self.query.type
        assert isinstance(query_type, TensorType)
        return query_type.get_shape()

    def verify_(self) -> None:
        op = self.name
        cache = cache_type_of(self.cache)
        query = ranked_tensor(op, "query", self.query.type, 4)
        check_data_element_type(op, "query", query, cache)
        batch, q_len, q_heads, head_dim = query.get_shape()
        static_dim(op, "query num_heads", q_heads)
        static_dim(op, "query head_dim", head_dim)
        dims_agree(op, "query head_dim", head_dim, "cache head_dim", cache.head_dim)
        if q_heads % cache.num_heads != 0:
            raise VerifyException(
                f"{op}: query num_heads {q_heads} is not a multiple of "
                f"cache num_heads {cache.num_heads}"
            )
        at_most(op, "query length", q_len, "max_seq_len", cache.max_seq_len)
        table_batch, _ = check_table_and_lens(
            op, self.block_table, self.seq_lens, cache
        )
        dims_agree(op, "block_table batch", table_batch, "query batch", batch)
        if self.output.type != query:
            raise VerifyException(
                f"{op}: output type {self.output.type} does not match "
                f"query type {query}"
            )
        if self.num_heads_attr is not None:
            dims_agree(
                op,
                "num_heads",
                self.num_heads_attr.value.data,
                "query num_heads",
                q_heads,
            )
        if self.head_dim_attr is not None:
            dims_agree(
                op,
                "head_dim",
                self.head_dim_attr.value.data,
                "query head_dim",
                head_dim,
            )
        # The runtime's own rules, so that a verified program never fails
        # these checks when it runs.
        try:
            if self.scale_attr is not None:
                check_scale(self.scale_attr.value.data, head_dim)
            window = check_window(self.sliding_window)
            check_sinks(self.sink_tokens, window)
            check_soft_cap(self.logits_soft_cap)
        except ConfigError as e:
            raise VerifyException(f"{op}: {e}") from e
        check_layer(op, self.layer, cache)

    # KVCacheInterface
    def get_cache(self) -> SSAValue:
        return self.cache

    def get_layer(self) -> int | None:
        return self.layer

    def get_tokens_read(self) -> int | None:
        batch = self.get_batch_size()
        kv_len = self.get_max_kv_len()
        window = self.sliding_window
        q_len = self.get_query_len()
        if window is not None and q_len is not None:
            # The tile of Tq queries sees at most W + Tq - 1 distinct keys,
            # and the sinks.
            kv_len = min(kv_len, window + q_len - 1 + (self.sink_tokens or 0))
        return None if batch is None else batch * kv_len

    # AttentionInterface
    def get_batch_size(self) -> int | None:
        batch = self._query_shape()[0]
        return None if batch == DYNAMIC_INDEX else batch

    def get_query_len(self) -> int | None:
        q_len = self._query_shape()[1]
        return None if q_len == DYNAMIC_INDEX else q_len

    def get_num_query_heads(self) -> int:
        return self._query_shape()[2]

    def get_head_dim(self) -> int:
        return self._query_shape()[3]

    def get_scale(self) -> float:
        return self.scale

    def is_causal(self) -> bool:
        return self.causal

    def get_sliding_window(self) -> int | None:
        return self.sliding_window

    def get_sink_tokens(self) -> int | None:
        return self.sink_tokens

    def get_logits_soft_cap(self) -> float | None:
        return self.logits_soft_cap

    def get_max_kv_len(self) -> int:
        cache = self.get_cache_type()
        table_type = self.block_table.type
        assert isinstance(table_type, TensorType)
        width = table_type.get_shape()[1]
        if width == DYNAMIC_INDEX:
            return cache.max_seq_len
        return width * cache.block_size


@irdl_op_definition
class FreeSequenceOp(KVCacheInterface, IRDLOperation):
    """
    Ends sequences: their ids are forgotten and each block goes back to the
    pool once no sequence holds it (a block indexed by prefix caching stays
    matchable until it is evicted, with retention `priority`, optional).

    Like `llm.append_kv` it returns the new version of the cache.

    ```mlir
    %kv2 = llm.free_sequence %kv, %seq_ids : (!kv_cache_t, tensor<2xi32>) -> !kv_cache_t
    ```
    """

    name = "llm.free_sequence"

    cache = operand_def(PagedKVCacheType)
    seq_ids = operand_def(TensorType)

    priority_attr = opt_prop_def(IntegerAttr[I32], prop_name="priority")

    new_cache = result_def(PagedKVCacheType)

    irdl_options = _OPTIONS
    assembly_format = _FUNCTIONAL_FORMAT

    def __init__(
        self, cache: SSAValue, seq_ids: SSAValue, *, priority: int | None = None
    ):
        super().__init__(
            operands=[cache, seq_ids],
            result_types=[cache.type],
            properties=_present({"priority": i32_attr_or_none(priority)}),
        )

    @property
    def priority(self) -> int | None:
        """The retention priority the freed sequences' cached blocks keep
        (None: each sequence's own, 0 unless the runtime set one)."""
        attr = self.priority_attr
        return None if attr is None else attr.value.data

    def verify_(self) -> None:
        op = self.name
        same_cache_type(op, self.cache, self.new_cache)
        i32_tensor(op, "seq_ids", self.seq_ids.type, 1)

    # KVCacheInterface
    def get_cache(self) -> SSAValue:
        return self.cache

    def get_updated_cache(self) -> SSAValue | None:
        return self.new_cache


@irdl_op_definition
class ForkSequenceOp(KVCacheInterface, IRDLOperation):
    """
    Starts each new sequence `children[i]` as a copy of `parents[i]`: the same
    tokens in the same blocks, shared (nothing is copied until one of them
    appends into a shared, partly filled block).  Parallel sampling and beam
    search fork one prompt into several continuations.

    ```mlir
    %kv2 = llm.fork_sequence %kv, %parents, %children
        : (!kv_cache_t, tensor<4xi32>, tensor<4xi32>) -> !kv_cache_t
    ```
    """

    name = "llm.fork_sequence"

    cache = operand_def(PagedKVCacheType)
    parents = operand_def(TensorType)
    children = operand_def(TensorType)

    new_cache = result_def(PagedKVCacheType)

    irdl_options = _OPTIONS
    assembly_format = _FUNCTIONAL_FORMAT

    def __init__(self, cache: SSAValue, parents: SSAValue, children: SSAValue):
        super().__init__(operands=[cache, parents, children], result_types=[cache.type])

    def verify_(self) -> None:
        op = self.name
        same_cache_type(op, self.cache, self.new_cache)
        parents = i32_tensor(op, "parents", self.parents.type, 1)
        children = i32_tensor(op, "children", self.children.type, 1)
        dims_agree(
            op,
            "children count",
            children.get_shape()[0],
            "parents count",
            parents.get_shape()[0],
        )

    # KVCacheInterface
    def get_cache(self) -> SSAValue:
        return self.cache

    def get_updated_cache(self) -> SSAValue | None:
        return self.new_cache


@irdl_op_definition
class MatchPrefixOp(KVCacheInterface, IRDLOperation):
    """
    Starts each new sequence `seq_ids[b]` with the cached blocks of the
    longest stored prefix of its prompt `token_ids[b]` (`[batch, T]` i32,
    negative ids pad a shorter prompt's end) and returns, per sequence, how
    many of its tokens are now in the cache (`[batch]` i32): the program
    appends the rest.  At least the last prompt token is always left to
    compute.  The cache must be created with `prefix_caching`.

    ```mlir
    %kv2, %cached = llm.match_prefix %kv, %seq_ids, %prompts
        : (!kv_cache_t, tensor<2xi32>, tensor<2x512xi32>)
        -> (!kv_cache_t, tensor<2xi32>)
    ```
    """

    name = "llm.match_prefix"

    cache = operand_def(PagedKVCacheType)
    seq_ids = operand_def(TensorType)
    token_ids = operand_def(TensorType)

    new_cache = result_def(PagedKVCacheType)
    cached_lens = result_def(TensorType)

    irdl_options = _OPTIONS
    assembly_format = _FUNCTIONAL_FORMAT

    def __init__(self, cache: SSAValue, seq_ids: SSAValue, token_ids: SSAValue):
        seq_ids_type = seq_ids.type
        assert isinstance(seq_ids_type, TensorType)
        super().__init__(
            operands=[cache, seq_ids, token_ids],
            result_types=[cache.type, TensorType(i32, seq_ids_type.get_shape())],
        )

    def verify_(self) -> None:
        op = self.name
        cache = same_cache_type(op, self.cache, self.new_cache)
        seq_ids = i32_tensor(op, "seq_ids", self.seq_ids.type, 1)
        (batch,) = seq_ids.get_shape()
        prompts = i32_tensor(op, "token_ids", self.token_ids.type, 2)
        prompt_batch, prompt_len = prompts.get_shape()
        dims_agree(op, "token_ids batch", prompt_batch, "seq_ids batch", batch)
        at_most(op, "prompt length", prompt_len, "max_seq_len", cache.max_seq_len)
        cached = i32_tensor(op, "cached_lens", self.cached_lens.type, 1)
        dims_agree(
            op, "cached_lens batch", cached.get_shape()[0], "seq_ids batch", batch
        )

    # KVCacheInterface
    def get_cache(self) -> SSAValue:
        return self.cache

    def get_updated_cache(self) -> SSAValue | None:
        return self.new_cache


@irdl_op_definition
class ReserveSlotsOp(KVCacheInterface, IRDLOperation):
    """
    Reserves `num_tokens` positions in every layer of each sequence of the
    batch, allocating the blocks they need: a decode step's bookkeeping, done
    once for all layers (vLLM's slot mapping).  Results: the new cache, the
    slot of every reserved position (`[L, batch, T]` i32; layer l of a
    sequence gets positions `[written_l, written_l + T)`), and the block
    table and lengths the step's attention reads.  `llm.write_kv` fills the
    slots layer by layer; `llm-reserve-slots-per-step` rewrites a step's
    `llm.append_kv` ops into this pair.

    ```mlir
    %kv1, %slots, %table, %lens = llm.reserve_slots %kv, %seq_ids {num_tokens = 1 : i32}
        : (!kv_cache_t, tensor<2xi32>) -> (!kv_cache_t, tensor<12x2x1xi32>,
           tensor<2x256xi32>, tensor<2xi32>)
    ```
    """

    name = "llm.reserve_slots"

    cache = operand_def(PagedKVCacheType)
    seq_ids = operand_def(TensorType)

    num_tokens_attr = prop_def(IntegerAttr[I32], prop_name="num_tokens")

    new_cache = result_def(PagedKVCacheType)
    slots = result_def(TensorType)
    block_table = result_def(TensorType)
    seq_lens = result_def(TensorType)

    irdl_options = _OPTIONS
    assembly_format = _FUNCTIONAL_FORMAT

    def __init__(
        self,
        cache: SSAValue,
        seq_ids: SSAValue,
        num_tokens: int,
        table_type: Attribute | None = None,
    ):
        """`table_type` defaults to a dynamic-width `[batch, ?]` table."""
        cache_type = cache.type
        seq_ids_type = seq_ids.type
        assert isinstance(cache_type, PagedKVCacheType)
        assert isinstance(seq_ids_type, TensorType)
        (batch,) = seq_ids_type.get_shape()
        layers = cache_type.num_layers
        super().__init__(
            operands=[cache, seq_ids],
            result_types=[
                cache_type,
                TensorType(i32, [layers, batch, num_tokens]),
                table_type or TensorType(i32, [batch, DYNAMIC_INDEX]),
                TensorType(i32, [batch]),
            ],
            properties={"num_tokens": IntegerAttr(num_tokens, i32)},
        )

    @property
    def num_tokens(self) -> int:
        return self.num_tokens_attr.value.data

    def verify_(self) -> None:
        op = self.name
        cache = same_cache_type(op, self.cache, self.new_cache)
        if self.num_tokens < 1:
            raise VerifyException(
                f"{op}: num_tokens must be positive, got {self.num_tokens}"
            )
        at_most(op, "num_tokens", self.num_tokens, "max_seq_len", cache.max_seq_len)
        seq_ids = i32_tensor(op, "seq_ids", self.seq_ids.type, 1)
        (batch,) = seq_ids.get_shape()
        slots = i32_tensor(op, "slots", self.slots.type, 3)
        layers, slot_batch, slot_tokens = slots.get_shape()
        dims_agree(op, "slots layers", layers, "cache num_layers", cache.num_layers)
        dims_agree(op, "slots batch", slot_batch, "seq_ids batch", batch)
        dims_agree(op, "slots tokens", slot_tokens, "num_tokens", self.num_tokens)
        table_batch, _ = check_table_and_lens(
            op, self.block_table, self.seq_lens, cache
        )
        dims_agree(op, "block_table batch", table_batch, "seq_ids batch", batch)

    # KVCacheInterface
    def get_cache(self) -> SSAValue:
        return self.cache

    def get_updated_cache(self) -> SSAValue | None:
        return self.new_cache


@irdl_op_definition
class WriteKVOp(KVCacheInterface, IRDLOperation):
    """
    Writes one layer's keys and values (`[batch, T, H, D]`) into slots that
    `llm.reserve_slots` reserved (its `[L, batch, T]` result; `layer`
    selects the row).  Returns the new version of the cache.

    ```mlir
    %kv2 = llm.write_kv %kv1, %keys, %values, %slots {layer = 3 : i32}
        : (!kv_cache_t, tensor<2x1x16x64xf16>, tensor<2x1x16x64xf16>,
           tensor<12x2x1xi32>) -> !kv_cache_t
    ```
    """

    name = "llm.write_kv"

    cache = operand_def(PagedKVCacheType)
    keys = operand_def(TensorType)
    values = operand_def(TensorType)
    slots = operand_def(TensorType)

    layer_attr = prop_def(IntegerAttr[I32], _LAYER_DEFAULT, prop_name="layer")

    new_cache = result_def(PagedKVCacheType)

    irdl_options = _OPTIONS
    assembly_format = _FUNCTIONAL_FORMAT

    def __init__(
        self,
        cache: SSAValue,
        keys: SSAValue,
        values: SSAValue,
        slots: SSAValue,
        *,
        layer: int | None = None,
    ):
        super().__init__(
            operands=[cache, keys, values, slots],
            result_types=[cache.type],
            properties=_present({"layer": i32_attr_or_none(layer)}),
        )

    @property
    def layer(self) -> int:
        return self.layer_attr.value.data

    def verify_(self) -> None:
        op = self.name
        cache = same_cache_type(op, self.cache, self.new_cache)
        keys = check_keys_and_values(op, self.keys, self.values, cache)
        batch, tokens = keys.get_shape()[:2]
        slots = i32_tensor(op, "slots", self.slots.type, 3)
        layers, slot_batch, slot_tokens = slots.get_shape()
        dims_agree(op, "slots layers", layers, "cache num_layers", cache.num_layers)
        dims_agree(op, "slots batch", slot_batch, "keys batch", batch)
        dims_agree(op, "slots tokens", slot_tokens, "keys tokens", tokens)
        check_layer(op, self.layer, cache)

    # KVCacheInterface
    def get_cache(self) -> SSAValue:
        return self.cache

    def get_updated_cache(self) -> SSAValue | None:
        return self.new_cache

    def get_appended_tokens(self) -> int | None:
        return batch_times_tokens(self.keys)

    def get_layer(self) -> int | None:
        return self.layer


class _SwapOp(KVCacheInterface, IRDLOperation):
    """Shared definition of `llm.swap_out` and `llm.swap_in`."""

    cache = operand_def(PagedKVCacheType)
    seq_ids = operand_def(TensorType)

    new_cache = result_def(PagedKVCacheType)

    irdl_options = _OPTIONS
    assembly_format = _FUNCTIONAL_FORMAT

    def __init__(self, cache: SSAValue, seq_ids: SSAValue):
        super().__init__(operands=[cache, seq_ids], result_types=[cache.type])

    def verify_(self) -> None:
        same_cache_type(self.name, self.cache, self.new_cache)
        i32_tensor(self.name, "seq_ids", self.seq_ids.type, 1)

    # KVCacheInterface
    def get_cache(self) -> SSAValue:
        return self.cache

    def get_updated_cache(self) -> SSAValue | None:
        return self.new_cache


@irdl_op_definition
class SwapOutOp(_SwapOp):
    """
    Moves sequences to the cache's swap tier (`swap_blocks` slots): their
    blocks' keys and values are copied out and the pool blocks given back.
    Until `llm.swap_in`, the sequences reject appends and table reads.

    ```mlir
    %kv2 = llm.swap_out %kv, %seq_ids : (!kv_cache_t, tensor<2xi32>) -> !kv_cache_t
    ```
    """

    name = "llm.swap_out"


@irdl_op_definition
class SwapInOp(_SwapOp):
    """
    Brings swapped-out sequences back into free pool blocks, bit for bit
    (block ids may differ: read tables after it).

    ```mlir
    %kv3 = llm.swap_in %kv2, %seq_ids : (!kv_cache_t, tensor<2xi32>) -> !kv_cache_t
    ```
    """

    name = "llm.swap_in"


def _present(properties: dict[str, Attribute | None]) -> dict[str, Attribute]:
    """The given properties, without the absent (None) ones."""
    return {k: v for k, v in properties.items() if v is not None}


LLM = Dialect(
    "llm",
    [
        CreateKVCacheOp,
        AppendKVOp,
        BlockTableOp,
        LookupKVOp,
        PagedAttentionOp,
        FreeSequenceOp,
        ForkSequenceOp,
        MatchPrefixOp,
        ReserveSlotsOp,
        WriteKVOp,
        SwapOutOp,
        SwapInOp,
    ],
    [
        PagedKVCacheType,
    ],
)
