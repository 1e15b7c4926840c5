"""transformers' own greedy decoding, one prompt at a time (no padding), with
eager attention and its default cache: what llmir's path must reproduce."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel


def hf_greedy(
    model: PreTrainedModel,
    prompt: Sequence[int],
    new_tokens: int,
    forced: Sequence[int] | None = None,
) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens and the float32 logits behind each ``[new_tokens,
    vocab]``; `forced` feeds those tokens back instead (teacher forcing)."""
    model.set_attn_implementation("eager")
    cache = DynamicCache(config=model.config)
    tokens: list[int] = []
    logits: list[torch.Tensor] = []
    inputs = torch.tensor([list(prompt)])
    position = 0
    with torch.inference_mode():
        for step in range(new_tokens):
            positions = torch.arange(position, position + inputs.shape[1])[None, :]
            out = model(
                input_ids=inputs,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
            position += inputs.shape[1]
            row = out.logits[0, -1].float()
            logits.append(row)
            tokens.append(int(torch.argmax(row)))
            fed = tokens[-1] if forced is None else int(forced[step])
            inputs = torch.tensor([[fed]])
    return tokens, torch.stack(logits)
