"""Seeded random models of the supported architectures, for tests, the CLI's
``--random-model`` and benchmarks: no download, the same weights for the
same seed.

Each tiny config keeps its architecture's distinguishing features small
enough to be exercised by short prompts: GQA everywhere; Mistral's sliding
window; Gemma 2's window on alternate layers, logit soft-capping and
``query_pre_attn_scalar``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)

from llmir.errors import ConfigError
from llmir.testing.tiny_llama import TinyLlamaConfig

_TINY: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


def _llama() -> PretrainedConfig:
    return LlamaConfig(**_TINY)


def _mistral() -> PretrainedConfig:
    return MistralConfig(**_TINY, sliding_window=24)


def _qwen2() -> PretrainedConfig:
    return Qwen2Config(**_TINY)


def _gemma2() -> PretrainedConfig:
    return Gemma2Config(
        **_TINY,
        sliding_window=24,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        query_pre_attn_scalar=16,
    )


def _llama_small() -> PretrainedConfig:
    """`llmir.testing.tiny_llama`'s architecture (hidden 512, 4 layers, GQA
    8/2, head_dim 64, RoPE base 10000: transformers' default), the model of
    issue 13's quantization gate and of the pruning benchmark, here as a
    transformers model."""
    tiny = TinyLlamaConfig()
    return LlamaConfig(
        vocab_size=tiny.vocab,
        hidden_size=tiny.hidden,
        intermediate_size=tiny.intermediate,
        num_hidden_layers=tiny.layers,
        num_attention_heads=tiny.heads,
        num_key_value_heads=tiny.kv_heads,
        head_dim=tiny.head_dim,
        initializer_range=tiny.init_std,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


def _llama_medium() -> PretrainedConfig:
    """The benchmark model of issue 15: hidden 1024, 8 layers, GQA 16/4."""
    return LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


RANDOM_MODELS: dict[str, Callable[[], PretrainedConfig]] = {
    "llama-tiny": _llama,
    "mistral-tiny": _mistral,
    "qwen2-tiny": _qwen2,
    "gemma2-tiny": _gemma2,
    "llama-small": _llama_small,
    "llama-medium": _llama_medium,
}


def random_config(name: str) -> PretrainedConfig:
    try:
        return RANDOM_MODELS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown random model {name!r}; choose one of {', '.join(RANDOM_MODELS)}"
        ) from None


def random_model(
    name: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
) -> PreTrainedModel:
    """The seeded random model `name` (a key of `RANDOM_MODELS`), in eval
    mode."""
    config = random_config(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        config, dtype=dtype, attn_implementation=attn_implementation
    )
    return model.eval()
