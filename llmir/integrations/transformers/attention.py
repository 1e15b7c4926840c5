"""The ``"llmir"`` attention implementation of transformers.

`use_llmir_attention(model)` registers it (once per process) with
transformers' `AttentionInterface` and `AttentionMaskInterface` and switches
the model to it.  The attention function reads the layer's keys and values
from llmir's pool through the `LlmirCache` passed as ``cache``;
the mask function builds nothing, because the kernels apply the causal,
sliding-window and per-sequence length masks themselves.  A padded batch
cannot be expressed that way: it is refused (the engine in
`llmir.integrations.transformers.engine` batches ragged prompts without
padding instead).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

from llmir.errors import ConfigError
from llmir.integrations.transformers.cache import STAGING_CACHE
from llmir.integrations.transformers.steps import AttentionOptions

ATTN_IMPLEMENTATION = "llmir"


def llmir_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature over llmir's pool."""
    cache = STAGING_CACHE.get()
    if cache is None:
        raise ConfigError(
            "attn_implementation='llmir' needs cache=LlmirCache(...) and use_cache=True"
        )
    try:
        if dropout:
            raise ConfigError(
                f"llmir attention is for inference, got dropout={dropout}"
            )
        layer = int(getattr(module, "layer_idx", -1))
        options = AttentionOptions(
            scale=None if scaling is None else float(scaling),
            sliding_window=None if sliding_window is None else int(sliding_window),
            logits_soft_cap=None if not softcap else float(softcap),
        )
        return cache.attend(layer, query, key, options), None
    except BaseException:
        # Nothing of this forward may linger into the next one.
        cache.abort_step()
        raise


def llmir_mask(
    *, attention_mask: torch.Tensor | None = None, **kwargs: Any
) -> torch.Tensor | None:
    """No mask tensor: the kernels mask by position.  Padding is refused."""
    if (
        attention_mask is not None
        and attention_mask.dim() == 2
        and not bool(attention_mask.all())
    ):
        raise ConfigError(
            "llmir attention does not take padded batches; run ragged "
            "prompts through llmir.integrations.transformers.Engine"
        )
    return None


def register() -> None:
    """Make ``attn_implementation="llmir"`` known to transformers."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, llmir_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, llmir_mask)


def use_llmir_attention(model: PreTrainedModel) -> None:
    """Switch `model` to llmir attention (registering it first)."""
    register()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
