"""transformers' own generation on the same model and prompts, for
``llmir-generate --compare-hf`` and the benchmark: a padded batch (left
padding, attention mask) through ``model.generate`` with its default cache,
greedy."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
)


@dataclass
class HFRun:
    tokens: list[list[int]]
    """Each row's new tokens, up to and including its first stop token."""
    seconds: float
    first_token_s: float
    """From the call to the first step's logits (the padded prefill)."""
    kv_bytes: int
    """What its cache holds at the end: every row padded to the longest."""


class _StepClock(LogitsProcessor):
    """Notes when each step's logits are ready; changes nothing."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


def hf_generate(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    attn_implementation: str = "sdpa",
    stop_at_eos: bool = True,
) -> HFRun:
    """Greedy ``model.generate`` on the left-padded batch of `prompts`,
    with `attn_implementation` (the model is left switched to it)."""
    model.set_attn_implementation(attn_implementation)
    longest = max(len(p) for p in prompts)
    pad = 0
    ids = torch.full((len(prompts), longest), pad, dtype=torch.int64)
    mask = torch.zeros((len(prompts), longest), dtype=torch.int64)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.as_tensor(list(prompt))
        mask[row, longest - len(prompt) :] = 1
    eos = model.generation_config.eos_token_id if stop_at_eos else None
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=pad,
        return_dict_in_generate=True,
    )
    clock = _StepClock()
    with torch.inference_mode():
        began = time.perf_counter()
        out = model.generate(  # pyright: ignore[reportCallIssue]
            ids,
            attention_mask=mask,
            generation_config=config,
            logits_processor=LogitsProcessorList([clock]),
        )
        seconds = time.perf_counter() - began
    stops: set[int] = set()
    if eos is not None:
        stops = {eos} if isinstance(eos, int) else set(eos)
    tokens: list[list[int]] = []
    for row in out.sequences[:, longest:].tolist():
        kept: list[int] = []
        for token in row:
            kept.append(token)
            if token in stops:
                break
        tokens.append(kept)
    kv_bytes = 0
    cache = out.cache
    if cache is not None:
        for layer in cache.layers:
            for tensor in (layer.keys, layer.values):
                if isinstance(tensor, torch.Tensor):
                    kv_bytes += tensor.numel() * tensor.element_size()
    first = clock.times[0] - began if clock.times else seconds
    return HFRun(tokens, seconds, first, kv_bytes)
