"""Next-token choice: greedy, or seeded sampling with temperature, top-k and
top-p.  Each request draws from its own generator, so its tokens do not
depend on which other requests shared its batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmir.errors import ConfigError


@dataclass(frozen=True)
class SamplingParams:
    """``temperature == 0`` is greedy (the default); otherwise logits are
    divided by it, cut to the `top_k` most likely (0: all) and to the
    smallest set whose mass reaches `top_p`, and sampled with `seed`."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """One request's sampling state."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._generator: torch.Generator | None = None
        if not params.greedy:
            self._generator = torch.Generator().manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """The next token from one row of float logits ``[vocab]``."""
        params = self.params
        if self._generator is None:
            return int(torch.argmax(logits))
        scaled = logits.float() / params.temperature
        if params.top_k:
            kth = torch.topk(scaled, min(params.top_k, scaled.numel())).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            sorted_probs[before >= params.top_p] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self._generator))
