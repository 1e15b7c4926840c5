"""llmir as the KV cache and attention of transformers models: the same
greedy tokens and logits as transformers' eager attention with its own
cache, for every supported architecture (random tiny configs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_reference import hf_greedy

from llmir.errors import ConfigError
from llmir.integrations.transformers import (
    LlmirCache,
    random_model,
    use_llmir_attention,
)
from llmir.integrations.transformers.engine import Engine, Request

ARCHITECTURES = ["llama-tiny", "mistral-tiny", "qwen2-tiny", "gemma2-tiny"]
# Ragged, and longer than the tiny models' sliding window (24) so that
# Mistral's and Gemma 2's windows cut in during prefill and decode.
PROMPT_LENS = (5, 23, 41)
NEW_TOKENS = 17  # the prefill's token, then 16 decode steps


def _prompts(seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 512, n).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(
    request: pytest.FixtureRequest,
) -> tuple[str, object, list[tuple[list[int], torch.Tensor]]]:
    model = random_model(request.param, seed=0)
    reference = [hf_greedy(model, p, NEW_TOKENS) for p in _prompts()]
    return request.param, model, reference


def test_f32_cache_gives_transformers_tokens_and_logits(arch) -> None:
    name, model, reference = arch
    engine = Engine(model, num_blocks=64, max_batch=3, record_logits=True)
    done = engine.run(
        [Request(i, p, max_new_tokens=NEW_TOKENS) for i, p in enumerate(_prompts())]
    )
    for i, (tokens, logits) in enumerate(reference):
        assert done[i].tokens == tokens, (name, i)
        ours = torch.stack(done[i].logits)
        assert torch.allclose(ours, logits, atol=1e-4, rtol=0), (
            name,
            i,
            float((ours - logits).abs().max()),
        )
    # Finished requests gave their blocks back at once.
    assert engine.kv.stats().blocks_used == 0


@pytest.mark.parametrize(("kv_dtype", "tolerance"), [("f16", 5e-3), ("bf16", 2e-2)])
def test_half_caches_teacher_forced(arch, kv_dtype: str, tolerance: float) -> None:
    name, model, reference = arch
    engine = Engine(model, kv_dtype=kv_dtype, num_blocks=64, record_logits=True)
    requests = [
        Request(i, p, max_new_tokens=NEW_TOKENS, forced_tokens=reference[i][0])
        for i, p in enumerate(_prompts())
    ]
    done = engine.run(requests)
    worst = max(
        float((torch.stack(done[i].logits) - reference[i][1]).abs().max()) for i in done
    )
    assert worst <= tolerance, (name, kv_dtype, worst)
    # The half cache really stored halves: the f32 cache is closer.
    exact = Engine(model, num_blocks=64, record_logits=True).run(requests)
    f32_worst = max(
        float((torch.stack(exact[i].logits) - reference[i][1]).abs().max())
        for i in exact
    )
    assert worst > 2 * f32_worst, (name, kv_dtype, worst, f32_worst)


def test_model_generate_with_llmir_cache(arch) -> None:
    """transformers' own ``generate`` with an `LlmirCache` (unpadded batch)."""
    name, model, reference = arch
    prompt = _prompts()[1]
    use_llmir_attention(model)
    cache = LlmirCache.for_config(model.config, num_blocks=16)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            cache=cache,
            eos_token_id=None,
        )
    assert out[0, len(prompt) :].tolist() == reference[1][0], name
    # One llmir sequence holds the prompt and every fed-back token.
    assert cache.kv.seq_len(0) == len(prompt) + NEW_TOKENS - 1


def test_padded_batch_is_refused() -> None:
    model = random_model("llama-tiny")
    use_llmir_attention(model)
    cache = LlmirCache.for_config(model.config, num_blocks=16)
    ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ConfigError, match="padded"), torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True)


def test_cache_without_llmir_attention_is_refused() -> None:
    """An `LlmirCache` under another attention implementation would attend
    to the step's own keys only: refused at the next step."""
    model = random_model("llama-tiny")
    cache = LlmirCache.for_config(model.config, num_blocks=16)
    model.set_attn_implementation("eager")
    with (
        torch.inference_mode(),
        pytest.raises(ConfigError, match="attn_implementation='llmir'"),
    ):
        model(input_ids=torch.tensor([[1, 2]]), cache=cache, use_cache=True)


def test_llmir_attention_without_its_cache_is_refused() -> None:
    model = random_model("llama-tiny")
    use_llmir_attention(model)
    with torch.inference_mode(), pytest.raises(ConfigError, match="LlmirCache"):
        model(input_ids=torch.tensor([[1, 2]]), use_cache=False)
