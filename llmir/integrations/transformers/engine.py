"""Continuous batching over llmir's paged cache: requests with ragged
prompts join and leave a running batch.

Each step (in the spirit of vLLM's scheduler):

1. admit waiting requests that have arrived, while the batch has room and
   the pool has blocks for their prompt and all their new tokens (so a step
   never runs out of blocks and nothing is preempted); with prefix caching,
   a new request first takes over the cached blocks of its longest cached
   prompt start (`PagedKVCache.match_prefix`) and computes only the rest;
2. prefill admitted requests, one forward each, in chunks of at most
   `max_prefill_tokens` tokens per step in total (chunked prefill: a long
   prompt spreads over several steps instead of stalling the decoders);
   the last chunk yields the request's first token;
3. decode every request that had a token before this step, all in one
   forward with one token per row (no padding: each row is its own llmir
   sequence, at its own position);
4. free a finished request's blocks at once.

A request's tokens do not depend on the others it shared a batch with: its
positions, its cache rows and its sampler are its own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from llmir.errors import ConfigError
from llmir.integrations.transformers.attention import use_llmir_attention
from llmir.integrations.transformers.cache import LlmirCache, ModelShape
from llmir.integrations.transformers.sampling import Sampler, SamplingParams
from llmir.integrations.transformers.steps import LayerStep, direct_step


@dataclass(frozen=True)
class Request:
    """A prompt (token ids) and how to continue it.  `arrival_step`: the
    engine step from which it may be admitted.  `forced_tokens`: teacher
    forcing, the tokens fed back in place of the sampled ones (the sampled
    ones are still reported)."""

    request_id: int
    prompt: Sequence[int]
    max_new_tokens: int = 16
    sampling: SamplingParams = field(default_factory=SamplingParams)
    arrival_step: int = 0
    stop_token_ids: tuple[int, ...] = ()
    forced_tokens: Sequence[int] | None = None


@dataclass
class Completion:
    """What a request produced.  `cached_prompt_tokens`: prompt tokens
    taken from the prefix cache instead of computed.  `logits`: the float32
    next-token logits behind each token, when the engine records them."""

    request_id: int
    prompt_len: int
    tokens: list[int] = field(default_factory=lambda: [])
    cached_prompt_tokens: int = 0
    first_token_s: float = 0.0
    """From the step the request arrived at (queueing included) to its
    first token."""
    admitted_step: int = 0
    finish_reason: str = ""
    logits: list[torch.Tensor] = field(default_factory=lambda: [])


@dataclass
class KVSample:
    """KV memory after one engine step (before finished requests leave):
    the paged pool's used bytes; the bytes of the tokens the live sequences
    hold, each rounded up to whole blocks (the least a paged cache can use);
    and what a padded contiguous cache of the same live requests would hold
    (rows x longest x bytes per token, transformers' own layout)."""

    step: int
    paged_bytes: int
    tokens_held: int
    block_rounded_bytes: int
    contiguous_bytes: int


@dataclass
class EngineStats:
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    steps: int = 0
    peak_kv_bytes: int = 0
    peak_tokens_held: int = 0
    peak_block_rounded_bytes: int = 0
    peak_contiguous_bytes: int = 0
    timeline: list[KVSample] = field(default_factory=lambda: [])

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0


@dataclass
class _Active:
    request: Request
    seq_id: int
    sampler: Sampler
    completion: Completion
    blocks_reserved: int
    computed: int = 0
    """Prompt tokens in the cache (matched or prefilled)."""
    eligible_at: float = 0.0

    @property
    def position(self) -> int:
        """Tokens the sequence holds: the prompt, then every new token but
        the last (which the next decode step feeds)."""
        return len(self.request.prompt) + max(len(self.completion.tokens) - 1, 0)

    def next_input(self) -> int:
        tokens = self.completion.tokens
        forced = self.request.forced_tokens
        if forced is not None:
            return int(forced[len(tokens) - 1])
        return tokens[-1]


class Engine:
    """Continuous batching of `Request`s through `model` with llmir's cache
    and attention (the model is switched to ``attn_implementation="llmir"``).

    The pool: `num_blocks`, or `kv_memory` bytes, of `block_size`-token
    blocks of `kv_dtype` ("f32", "f16", "bf16").  `max_batch` bounds the
    running requests, `max_prefill_tokens` the prompt tokens computed per
    step.  `step` runs each attention layer (`direct_step`, or the IR's from
    `llmir.frontend`).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        kv_dtype: str = "f32",
        block_size: int = 16,
        num_blocks: int | None = None,
        kv_memory: int | None = None,
        prefix_caching: bool = False,
        max_batch: int = 16,
        max_prefill_tokens: int = 512,
        max_seq_len: int | None = None,
        record_logits: bool = False,
        step: LayerStep = direct_step,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        if max_prefill_tokens < 1:
            raise ConfigError(
                f"max_prefill_tokens must be >= 1, got {max_prefill_tokens}"
            )
        if num_blocks is None and kv_memory is None:
            raise ConfigError("give the pool as num_blocks or kv_memory (bytes)")
        use_llmir_attention(model)
        self.model = model
        self.cache = LlmirCache.for_config(
            model.config,
            kv_dtype=kv_dtype,
            block_size=block_size,
            num_blocks=num_blocks,
            memory_budget_bytes=kv_memory,
            max_seq_len=max_seq_len,
            prefix_caching=prefix_caching,
            step=step,
        )
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.record_logits = record_logits
        self.stats = EngineStats()
        shape = ModelShape.of(model.config)
        # What transformers' own cache keeps per token: K and V of every
        # layer in the model's dtype.
        self._contiguous_token_bytes = (
            2
            * shape.num_layers
            * shape.num_kv_heads
            * shape.head_dim
            * torch.finfo(model.dtype).bits
            // 8
        )
        self._next_seq_id = 0
        self._vocab = int(model.config.get_text_config().vocab_size)

    @property
    def kv(self) -> Any:
        return self.cache.kv

    # -- the schedule ----------------------------------------------------------

    def run(
        self, requests: Iterable[Request], *, progress: bool = False
    ) -> dict[int, Completion]:
        """Serve `requests` to completion; returns each one's `Completion`
        by request id.  Every request is checked before any work; if a step
        fails anyway (an exception from the model), the sequences of this
        run are freed before the error propagates, so the engine stays
        usable."""
        pending = sorted(requests, key=lambda r: r.arrival_step)
        self._check_requests(pending)
        live: list[_Active] = []
        bar = _progress_bar(progress, sum(r.max_new_tokens for r in pending))
        try:
            with torch.inference_mode():
                return self._serve(deque(pending), live, bar)
        except BaseException:
            self.cache.abort_step()
            held = set(self.kv.seq_ids)
            self.kv.free_sequences([a.seq_id for a in live if a.seq_id in held])
            raise
        finally:
            bar.close()

    def _serve(
        self, waiting: deque[Request], live: list[_Active], bar: Any
    ) -> dict[int, Completion]:
        prefilling: list[_Active] = []
        decoding: list[_Active] = []
        done: dict[int, Completion] = {}
        arrived: dict[int, float] = {}
        reserved = 0
        step = 0
        while waiting or prefilling or decoding:
            if not (prefilling or decoding) and waiting[0].arrival_step > step:
                step = waiting[0].arrival_step  # idle until the next arrival
            now = time.perf_counter()
            for request in waiting:
                if request.arrival_step > step:
                    break
                arrived.setdefault(request.request_id, now)
            while (
                waiting
                and waiting[0].arrival_step <= step
                and len(prefilling) + len(decoding) < self.max_batch
                and reserved + self._blocks_for(waiting[0]) <= self.kv.num_blocks
            ):
                request = waiting.popleft()
                active = self._admit(request, arrived[request.request_id], step)
                reserved += active.blocks_reserved
                prefilling.append(active)
                live.append(active)
            ready = list(decoding)
            budget = self.max_prefill_tokens
            for active in list(prefilling):
                if budget == 0:
                    break
                budget -= self._prefill_chunk(active, budget)
                if active.computed == len(active.request.prompt):
                    prefilling.remove(active)
                    decoding.append(active)
                    bar.update(1)
            if ready:
                self._decode(ready)
                bar.update(len(ready))
            self._sample_memory(step, prefilling + decoding)
            for active in [a for a in decoding if self._finished(a)]:
                decoding.remove(active)
                live.remove(active)
                self.kv.free_sequence(active.seq_id)
                reserved -= active.blocks_reserved
                done[active.request.request_id] = active.completion
            step += 1
        self.stats.steps += step
        return done

    def _check_requests(self, requests: Sequence[Request]) -> None:
        seen: set[int] = set()
        for request in requests:
            rid = request.request_id
            if rid in seen:
                raise ConfigError(f"request id {rid} appears twice")
            seen.add(rid)
            if len(request.prompt) == 0:
                raise ConfigError(f"request {rid} has an empty prompt")
            if request.max_new_tokens < 1:
                raise ConfigError(
                    f"request {rid}: max_new_tokens must be >= 1, got "
                    f"{request.max_new_tokens}"
                )
            total = self._tokens_for(request)
            if total > self.kv.max_seq_len:
                raise ConfigError(
                    f"request {rid} needs {total} tokens, the cache's "
                    f"max_seq_len is {self.kv.max_seq_len}"
                )
            if self._blocks_for(request) > self.kv.num_blocks:
                raise ConfigError(
                    f"request {rid} needs {self._blocks_for(request)} blocks, "
                    f"the pool has {self.kv.num_blocks}"
                )
            bad = [t for t in request.prompt if not 0 <= int(t) < self._vocab]
            if bad:
                raise ConfigError(
                    f"request {rid}: token id {bad[0]} is outside the "
                    f"vocabulary [0, {self._vocab})"
                )
            forced = request.forced_tokens
            if forced is not None and len(forced) < request.max_new_tokens - 1:
                raise ConfigError(
                    f"request {rid} forces {len(forced)} tokens, "
                    f"{request.max_new_tokens - 1} are fed back"
                )

    @staticmethod
    def _tokens_for(request: Request) -> int:
        """Tokens the request's sequence holds at most: its prompt and every
        new token but the last (which is never fed back)."""
        return len(request.prompt) + request.max_new_tokens - 1

    def _blocks_for(self, request: Request) -> int:
        return -(-self._tokens_for(request) // self.kv.block_size)

    def _admit(self, request: Request, arrived: float, step: int) -> _Active:
        seq_id = self._next_seq_id
        self._next_seq_id += 1
        active = _Active(
            request,
            seq_id,
            Sampler(request.sampling),
            Completion(request.request_id, len(request.prompt)),
            self._blocks_for(request),
            eligible_at=arrived,
        )
        active.completion.admitted_step = step
        if self.kv.prefix_caching:
            cached = self.kv.match_prefix(seq_id, np.asarray(request.prompt))
            active.computed = cached
            active.completion.cached_prompt_tokens = cached
        return active

    def _prefill_chunk(self, active: _Active, budget: int) -> int:
        prompt = active.request.prompt
        start = active.computed
        stop = min(len(prompt), start + budget)
        tokens = torch.as_tensor(np.asarray(prompt[start:stop], np.int64))[None, :]
        positions = torch.arange(start, stop)[None, :]
        began = time.perf_counter()
        logits = self._forward([active.seq_id], tokens, positions)
        self.stats.prefill_s += time.perf_counter() - began
        self.stats.prefill_tokens += stop - start
        active.computed = stop
        if stop == len(prompt):
            self._take(active, logits[0])
            active.completion.first_token_s = time.perf_counter() - active.eligible_at
        return stop - start

    def _decode(self, batch: list[_Active]) -> None:
        tokens = torch.tensor([[a.next_input()] for a in batch], dtype=torch.int64)
        positions = torch.tensor([[a.position] for a in batch], dtype=torch.int64)
        began = time.perf_counter()
        logits = self._forward([a.seq_id for a in batch], tokens, positions)
        self.stats.decode_s += time.perf_counter() - began
        self.stats.decode_tokens += len(batch)
        for row, active in enumerate(batch):
            self._take(active, logits[row])

    def _forward(
        self, seq_ids: list[int], tokens: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Next-token logits (float32, ``[rows, vocab]``) after feeding
        `tokens` at `positions` to the sequences `seq_ids`."""
        self.cache.set_batch(seq_ids, token_ids=tokens.numpy())
        out = self.model(
            input_ids=tokens,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    def _take(self, active: _Active, logits: torch.Tensor) -> None:
        token = active.sampler(logits)
        active.completion.tokens.append(token)
        if self.record_logits:
            active.completion.logits.append(logits.clone())

    def _finished(self, active: _Active) -> bool:
        completion = active.completion
        if not completion.tokens:
            return False
        if completion.tokens[-1] in active.request.stop_token_ids:
            completion.finish_reason = "stop"
            return True
        if len(completion.tokens) >= active.request.max_new_tokens:
            completion.finish_reason = "length"
            return True
        return False

    def _sample_memory(self, step: int, live: list[_Active]) -> None:
        stats = self.kv.stats()
        # Admitted requests whose prefill has not started hold no sequence.
        held = set(self.kv.seq_ids)
        lens = [self.kv.seq_len(a.seq_id) for a in live if a.seq_id in held]
        block = self.kv.block_size
        rounded_blocks = sum(-(-n // block) for n in lens)
        sample = KVSample(
            step,
            stats.bytes_used,
            stats.tokens_stored,
            rounded_blocks * self.kv.geometry.bytes_per_block,
            len(lens) * max(lens, default=0) * self._contiguous_token_bytes,
        )
        self.stats.timeline.append(sample)
        self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, sample.paged_bytes)
        self.stats.peak_tokens_held = max(
            self.stats.peak_tokens_held, sample.tokens_held
        )
        self.stats.peak_block_rounded_bytes = max(
            self.stats.peak_block_rounded_bytes, sample.block_rounded_bytes
        )
        self.stats.peak_contiguous_bytes = max(
            self.stats.peak_contiguous_bytes, sample.contiguous_bytes
        )


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total: int) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="tok", desc="generate")
