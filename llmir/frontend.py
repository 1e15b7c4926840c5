"""From a model's configuration to `llm` IR: one function per attention
layer that appends the step's keys and values to the paged cache and
attends over it, with the model's head counts, scale, sliding window and
logit soft-cap as op attributes.

    from llmir.frontend import attention_options, layer_step_ir
    text = layer_step_ir(config, kv_dtype="f16")   # print it, lower it
    step = IRLayerStep(config, kv_dtype="f16")     # or run it

`IRLayerStep` is a `LayerStep` (see
`llmir.integrations.transformers.steps`): ``llmir-generate --via-ir`` runs a
model's attention through this IR under xDSL's interpreter while the
model's matmuls stay in torch.  The configuration is read duck-typed
(transformers' names: ``num_hidden_layers``, ``num_key_value_heads``,
``layer_types``, ``sliding_window``, ``query_pre_attn_scalar``,
``attn_logit_softcapping``), so this module needs no transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from llmir.errors import ConfigError
from llmir.runtime.dtypes import element_type
from llmir.runtime.geometry import CacheGeometry
from llmir.runtime.kv_cache import PagedKVCache

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class LayerAttention:
    """What one attention layer of a model asks of `llm.paged_attention`."""

    scale: float
    sliding_window: int | None
    logits_soft_cap: float | None


@dataclass(frozen=True)
class ModelAttention:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int
    layers: tuple[LayerAttention, ...]


def _text_config(config: Any) -> Any:
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def attention_options(config: Any) -> ModelAttention:
    """The attention of every layer of the decoder `config` describes:
    the window from ``layer_types`` ("sliding_attention" layers) or, without
    them, ``sliding_window`` on every layer (Mistral); the scale
    ``query_pre_attn_scalar ** -0.5`` (Gemma 2) or ``head_dim ** -0.5``;
    the soft-cap ``attn_logit_softcapping``."""
    text = _text_config(config)
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    num_layers = int(text.num_hidden_layers)
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        windows = [
            int(window) if kind == "sliding_attention" and window else None
            for kind in layer_types
        ]
    else:
        windows = [int(window) if window else None] * num_layers
    scalar = getattr(text, "query_pre_attn_scalar", None)
    scale = 1.0 / math.sqrt(float(scalar) if scalar else float(head_dim))
    cap = getattr(text, "attn_logit_softcapping", None)
    return ModelAttention(
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        max_positions=int(getattr(text, "max_position_embeddings", 4096)),
        layers=tuple(
            LayerAttention(scale, windows[i], float(cap) if cap else None)
            for i in range(num_layers)
        ),
    )


def layer_step_ir(
    config: Any,
    *,
    kv_dtype: str = "f32",
    block_size: int = 16,
    max_seq_len: int | None = None,
) -> str:
    """The `llm` IR of one step of every attention layer of `config`'s
    model: ``@layer_<i>(cache, query, keys, values, seq_ids) -> (cache,
    output)`` with dynamic batch and token counts."""
    model = attention_options(config)
    element = element_type(kv_dtype)
    seq_len = max_seq_len or model.max_positions
    cache = (
        f"!llm.paged_kv_cache<{element.ir_type}, {model.num_layers}, "
        f"{model.num_kv_heads}, {model.head_dim}, {block_size}, {seq_len}>"
    )
    query = f"tensor<?x?x{model.num_heads}x{model.head_dim}xf32>"
    kv = f"tensor<?x?x{model.num_kv_heads}x{model.head_dim}xf32>"
    lines = [
        f"// One decoder step's attention, per layer, of a {model.num_layers}-layer "
        f"model with {model.num_heads} query and {model.num_kv_heads} kv heads.",
        f"!cache = {cache}",
        "",
        "builtin.module {",
    ]
    for index, layer in enumerate(model.layers):
        attrs = [f"layer = {index} : i32", f"scale = {layer.scale!r} : f32"]
        if layer.sliding_window is not None:
            attrs.append(f"sliding_window = {layer.sliding_window} : i32")
        if layer.logits_soft_cap is not None:
            attrs.append(f"logits_soft_cap = {layer.logits_soft_cap!r} : f32")
        lines += [
            f"  func.func @layer_{index}(%cache : !cache, %query : {query},",
            f"      %keys : {kv}, %values : {kv}, %seq_ids : tensor<?xi32>)",
            f"      -> (!cache, {query}) {{",
            f"    %appended, %blocks = llm.append_kv %cache, %keys, %values, %seq_ids "
            f"{{layer = {index} : i32}}",
            f"        : (!cache, {kv}, {kv}, tensor<?xi32>)",
            "        -> (!cache, tensor<?x?xi32>)",
            "    %table, %lens = llm.block_table %appended, %seq_ids",
            "        : (!cache, tensor<?xi32>) -> (tensor<?x?xi32>, tensor<?xi32>)",
            "    %out = llm.paged_attention %query, %appended, %table, %lens "
            f"{{{', '.join(attrs)}}}",
            f"        : ({query}, !cache, tensor<?x?xi32>, tensor<?xi32>) -> {query}",
            f"    func.return %appended, %out : !cache, {query}",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


class IRLayerStep:
    """A `LayerStep` that runs `layer_step_ir`'s function of the layer
    under xDSL's interpreter (optionally after `passes`, e.g.
    ``convert-llm-to-func``).  It checks that the options the model passes
    at run time are the ones the IR was built with."""

    def __init__(
        self,
        config: Any,
        *,
        kv_dtype: str = "f32",
        block_size: int = 16,
        max_seq_len: int | None = None,
        passes: str = "",
    ) -> None:
        # Deferred: the interpreter pulls in xDSL's whole interpreter stack.
        from llmir.interpreters.runner import (
            apply_passes,
            entry_function,
            interpreter_value,
            llmir_context,
            make_interpreter,
            parse_module,
            python_value,
        )

        self._to_interpreter = interpreter_value
        self._from_interpreter = python_value

        self.model = attention_options(config)
        self.geometry = CacheGeometry(
            element_type(kv_dtype),
            self.model.num_layers,
            self.model.num_kv_heads,
            self.model.head_dim,
            block_size,
            max_seq_len or self.model.max_positions,
        )
        self.text = layer_step_ir(
            config, kv_dtype=kv_dtype, block_size=block_size, max_seq_len=max_seq_len
        )
        ctx = llmir_context()
        self.module = parse_module(self.text, ctx)
        if passes:
            apply_passes(self.module, passes, ctx)
        self._interpreter, _ = make_interpreter(self.module, ctx=ctx)
        self._functions = [
            entry_function(self.module, f"layer_{index}")
            for index in range(self.model.num_layers)
        ]
        self.calls = 0

    def __call__(
        self,
        cache: PagedKVCache,
        layer: int,
        query: Array,
        keys: Array,
        values: Array,
        seq_ids: npt.NDArray[np.int64],
        token_ids: npt.NDArray[np.int64] | None,
        options: Any,
    ) -> Array:
        interpreter_value = self._to_interpreter
        if cache.geometry != self.geometry:
            raise ConfigError(
                f"the IR was built for a cache of {self.geometry.describe()}, "
                f"got one of {cache.geometry.describe()}"
            )
        expected = self.model.layers[layer]
        asked = (options.sliding_window, options.logits_soft_cap)
        if asked != (expected.sliding_window, expected.logits_soft_cap) or (
            options.scale is not None
            and not math.isclose(options.scale, expected.scale, rel_tol=1e-6)
        ):
            raise ConfigError(
                f"layer {layer}: the model asks for scale={options.scale}, "
                f"window={options.sliding_window}, soft-cap="
                f"{options.logits_soft_cap}; the IR was built with "
                f"{expected.scale}, {expected.sliding_window}, "
                f"{expected.logits_soft_cap}"
            )
        if token_ids is not None:
            raise ConfigError("the IR step does not index prefixes; turn it off")
        function = self._functions[layer]
        assert function is not None
        types = function.function_type.inputs.data
        element = cache.element_type
        args = [
            cache,
            interpreter_value(query.astype(np.float32, copy=False), types[1], "query"),
            interpreter_value(_as_float32(keys, element), types[2], "keys"),
            interpreter_value(_as_float32(values, element), types[3], "values"),
            interpreter_value(seq_ids.astype(np.int32), types[4], "seq_ids"),
        ]
        results = self._interpreter.call_op(function, tuple(args))
        self.calls += 1
        out: Array = self._from_interpreter(results[1])
        return out if query.dtype == np.float32 else out.astype(query.dtype)


def _as_float32(array: Array, element: Any) -> Array:
    """Keys or values as float32 (raw bf16 bits decoded): the IR's tensors
    are f32."""
    if array.dtype == np.float32:
        return array
    if array.dtype == np.uint16:
        return element.decode(array)
    return array.astype(np.float32)
