"""llmir as the KV cache and attention of Hugging Face transformers.

    from llmir.integrations.transformers import Engine, Request, random_model

    model = random_model("llama-tiny")
    engine = Engine(model, kv_dtype="f16", num_blocks=256)
    done = engine.run([Request(0, prompt=[1, 2, 3], max_new_tokens=16)])

Needs the ``hf`` extra (torch and transformers).  The pieces:

* `LlmirCache` (`cache`): a transformers `Cache` over a `PagedKVCache`;
* the ``"llmir"`` attention implementation (`attention`), reading keys and
  values from the pool with llmir's kernels;
* `Engine` (`engine`): continuous batching of ragged requests;
* `random_model` (`models`): seeded random Llama, Mistral, Qwen2 and Gemma 2.
"""

from __future__ import annotations

from llmir.integrations.transformers.attention import (
    ATTN_IMPLEMENTATION,
    register,
    use_llmir_attention,
)
from llmir.integrations.transformers.cache import LlmirCache
from llmir.integrations.transformers.models import RANDOM_MODELS, random_model

__all__ = [
    "ATTN_IMPLEMENTATION",
    "RANDOM_MODELS",
    "LlmirCache",
    "random_model",
    "register",
    "use_llmir_attention",
]
