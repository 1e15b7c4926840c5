"""Continuous batching: requests that arrive and leave at different steps,
chunked prefill, prefix caching and seeded sampling give each request what
it gets when run alone; bookkeeping and memory are exact."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hf_reference import hf_greedy

from llmir.errors import ConfigError
from llmir.frontend import IRLayerStep
from llmir.integrations.transformers import random_model
from llmir.integrations.transformers.engine import Engine, Request
from llmir.integrations.transformers.sampling import SamplingParams
from llmir.integrations.transformers.tensors import as_tensor, kv_array
from llmir.runtime.dtypes import element_type


@pytest.fixture(scope="module")
def llama() -> object:
    return random_model("llama-tiny", seed=1)


def _requests(sampling: SamplingParams | None = None) -> list[Request]:
    rng = np.random.default_rng(3)
    lens = (9, 50, 3, 33, 17)
    arrivals = (0, 0, 2, 5, 11)
    new = (12, 6, 15, 4, 9)
    return [
        Request(
            i,
            rng.integers(0, 512, n).tolist(),
            max_new_tokens=m,
            arrival_step=a,
            sampling=sampling or SamplingParams(),
        )
        for i, (n, a, m) in enumerate(zip(lens, arrivals, new, strict=True))
    ]


def _alone(model: object, request: Request) -> list[int]:
    engine = Engine(model, num_blocks=32)  # type: ignore[arg-type]
    solo = Request(
        request.request_id,
        request.prompt,
        max_new_tokens=request.max_new_tokens,
        sampling=request.sampling,
    )
    return engine.run([solo])[request.request_id].tokens


def test_the_engine_passes_the_cache_by_its_current_name(llama) -> None:
    # transformers 5.24 renamed the models' `past_key_values` argument to
    # `cache` and warns of the old name, which forward stops taking in 5.40.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*deprecated", FutureWarning)
        done = Engine(llama, num_blocks=32).run(_requests()[:2])
    assert sorted(done) == [0, 1]


@pytest.mark.parametrize(
    "sampling",
    [SamplingParams(), SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=7)],
    ids=["greedy", "sampled"],
)
def test_a_schedule_gives_each_request_its_tokens_alone(llama, sampling) -> None:
    requests = _requests(sampling)
    # A batch of 2 and 16 prompt tokens per step: requests wait, prompts are
    # chunked across steps, and finished ones make room for later ones.
    engine = Engine(llama, num_blocks=64, max_batch=2, max_prefill_tokens=16)
    done = engine.run(requests)
    for request in requests:
        completion = done[request.request_id]
        assert len(completion.tokens) == request.max_new_tokens
        assert completion.tokens == _alone(llama, request), request.request_id
    assert engine.kv.stats().blocks_used == 0
    assert engine.stats.prefill_tokens == sum(len(r.prompt) for r in requests)
    # Every new token but each request's first comes from a decode step.
    assert engine.stats.decode_tokens == sum(r.max_new_tokens - 1 for r in requests)


def test_sampling_depends_on_the_seed(llama) -> None:
    request = _requests()[1]
    runs = {
        seed: _alone(
            llama,
            Request(0, request.prompt, 12, SamplingParams(temperature=1.0, seed=seed)),
        )
        for seed in (1, 2)
    }
    assert runs[1] != runs[2]
    again = Request(0, request.prompt, 12, SamplingParams(temperature=1.0, seed=1))
    assert _alone(llama, again) == runs[1]


def test_prefix_caching_reuses_blocks_and_keeps_tokens(llama) -> None:
    rng = np.random.default_rng(5)
    shared = rng.integers(0, 512, 40).tolist()
    prompts = [shared + rng.integers(0, 512, n).tolist() for n in (3, 9, 1)]
    requests = [
        Request(i, p, max_new_tokens=6, arrival_step=3 * i)
        for i, p in enumerate(prompts)
    ]
    plain = Engine(llama, num_blocks=64).run(requests)
    engine = Engine(llama, num_blocks=64, prefix_caching=True)
    cached = engine.run(requests)
    for i in range(len(prompts)):
        assert cached[i].tokens == plain[i].tokens
    assert cached[0].cached_prompt_tokens == 0
    # Later requests take the 2 whole blocks (32 tokens) of the shared start.
    assert cached[1].cached_prompt_tokens >= 32
    assert cached[2].cached_prompt_tokens >= 32
    assert engine.stats.prefill_tokens < sum(len(p) for p in prompts)


@pytest.mark.parametrize("name", ["llama-tiny", "gemma2-tiny"])
def test_via_ir_gives_the_direct_tokens(name: str) -> None:
    model = random_model(name, seed=2)
    requests = _requests()[:3]
    direct = Engine(model, num_blocks=64).run(requests)
    step = IRLayerStep(model.config)
    via_ir = Engine(model, num_blocks=64, step=step).run(requests)
    for request in requests:
        assert via_ir[request.request_id].tokens == direct[request.request_id].tokens
    assert step.calls > 0


def test_lowered_ir_gives_the_direct_tokens() -> None:
    model = random_model("qwen2-tiny", seed=2)
    requests = _requests()[:2]
    direct = Engine(model, num_blocks=64).run(requests)
    step = IRLayerStep(model.config, passes="convert-llm-to-func")
    lowered = Engine(model, num_blocks=64, step=step).run(requests)
    assert "func.call" in str(step.module)
    for request in requests:
        assert lowered[request.request_id].tokens == direct[request.request_id].tokens


def test_ir_refuses_options_it_was_not_built_with() -> None:
    model = random_model("mistral-tiny")
    other = random_model("llama-tiny")  # no window
    step = IRLayerStep(other.config)
    with pytest.raises(ConfigError, match="window"):
        Engine(model, num_blocks=16, step=step).run([Request(0, [1, 2, 3], 2)])


def test_peak_memory_is_the_tokens_held_in_whole_blocks(llama) -> None:
    engine = Engine(llama, num_blocks=64, block_size=8)
    engine.run(_requests())
    stats = engine.stats
    assert stats.peak_kv_bytes == stats.peak_block_rounded_bytes
    assert stats.peak_kv_bytes < stats.peak_contiguous_bytes
    for sample in stats.timeline:
        assert sample.paged_bytes == sample.block_rounded_bytes


def test_stop_tokens_end_a_request(llama) -> None:
    request = _requests()[0]
    tokens = _alone(llama, request)
    stop = tokens[3]
    first = tokens.index(stop)
    engine = Engine(llama, num_blocks=32)
    done = engine.run([Request(0, request.prompt, 12, stop_token_ids=(stop,))])
    assert done[0].tokens == tokens[: first + 1]
    assert done[0].finish_reason == "stop"


def test_a_full_pool_makes_requests_wait(llama) -> None:
    requests = _requests()
    # Room for about two requests at a time.
    engine = Engine(llama, num_blocks=7, block_size=16)
    done = engine.run(requests)
    for request in requests:
        assert done[request.request_id].tokens == _alone(llama, request)
    # Some request had to wait for blocks past its arrival.
    assert any(done[r.request_id].admitted_step > r.arrival_step for r in requests)
    assert max(s.paged_bytes for s in engine.stats.timeline) <= 7 * (
        engine.kv.geometry.bytes_per_block
    )


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        ([Request(0, [1], 2), Request(0, [2], 2)], "appears twice"),
        ([Request(0, [], 2)], "empty prompt"),
        ([Request(0, [1], 0)], "max_new_tokens"),
        ([Request(0, list(range(100)), 2000)], "max_seq_len"),
        ([Request(0, list(range(300)), 10)], "blocks, the pool has"),
        ([Request(0, [1], 5, forced_tokens=[1])], "forces"),
    ],
)
def test_bad_requests_are_refused_before_any_work(llama, requests, message) -> None:
    engine = Engine(llama, num_blocks=16)
    with pytest.raises(ConfigError, match=message):
        engine.run(requests)
    assert engine.stats.prefill_tokens == 0
    assert engine.kv.stats().blocks_used == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
    ],
)
def test_bad_sampling_is_refused(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SamplingParams(**kwargs)


def test_engine_needs_a_pool(llama) -> None:
    with pytest.raises(ConfigError, match="num_blocks or kv_memory"):
        Engine(llama)
    with pytest.raises(ConfigError, match="max_batch"):
        Engine(llama, num_blocks=4, max_batch=0)


def test_bf16_model_with_bf16_cache() -> None:
    """bf16 weights: keys and values reach the cache as their raw bits and
    the logits follow transformers' bf16 run, teacher-forced."""
    model = random_model("llama-tiny", seed=4, dtype=torch.bfloat16)
    requests = _requests()[:2]
    reference = [hf_greedy(model, r.prompt, r.max_new_tokens) for r in requests]
    engine = Engine(model, kv_dtype="bf16", num_blocks=32, record_logits=True)
    forced = [
        Request(r.request_id, r.prompt, r.max_new_tokens, forced_tokens=ref[0])
        for r, ref in zip(requests, reference, strict=True)
    ]
    done = engine.run(forced)
    for request, (_, logits) in zip(requests, reference, strict=True):
        ours = torch.stack(done[request.request_id].logits)
        scale = float(logits.abs().max())
        # transformers computes attention in bf16, llmir in f32 over the
        # same bf16 keys: they differ by bf16 rounding of the activations.
        assert float((ours - logits).abs().max()) <= 0.02 * scale


def test_bf16_keys_pass_as_raw_bits() -> None:
    states = torch.randn(2, 3, 5, 4).to(torch.bfloat16)  # [batch, H, T, D]
    bits = kv_array(states, element_type("bf16"))
    assert bits.dtype == np.uint16 and bits.shape == (2, 5, 3, 4)
    expected = states.transpose(1, 2).contiguous().view(torch.int16).numpy()
    assert np.array_equal(bits, expected.view(np.uint16))
    as_f32 = kv_array(states, element_type("f16"))
    assert as_f32.dtype == np.float32
    assert np.array_equal(as_f32, states.float().transpose(1, 2).numpy())


def test_tensors_cross_without_copies() -> None:
    """transformers' keys are ``[batch, T, H, D]`` memory viewed as
    ``[batch, H, T, D]``: the array the cache gets is that memory."""
    tokens_major = torch.randn(2, 5, 3, 4)
    states = tokens_major.transpose(1, 2)
    array = kv_array(states, element_type("f32"))
    assert np.shares_memory(array, tokens_major.numpy())
    out = np.zeros((2, 5, 3, 4), np.float32)
    assert np.shares_memory(as_tensor(out, states).numpy(), out)


def test_a_failed_run_frees_its_sequences(llama) -> None:
    """An exception from the model mid-run leaves nothing behind: the next
    run gets the whole pool."""
    engine = Engine(llama, num_blocks=16)
    calls = {"n": 0}
    original = engine.cache.step

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 30:  # a decode step, half-way through the layers
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    engine.cache.step = failing
    with pytest.raises(RuntimeError, match="boom"):
        engine.run(_requests()[:2])
    assert engine.kv.stats().blocks_used == 0 and engine.kv.seq_ids == []
    engine.cache.step = original
    request = _requests()[0]
    assert engine.run([request])[0].tokens == _alone(llama, request)


def test_an_interrupted_forward_is_not_continued(llama) -> None:
    """`LlmirCache` used directly: after a forward failed half-way, the next
    one refuses the misaligned sequence instead of attending over it."""
    from llmir.errors import SequenceError
    from llmir.integrations.transformers import LlmirCache, use_llmir_attention

    use_llmir_attention(llama)
    cache = LlmirCache.for_config(llama.config, num_blocks=8)
    original = cache.step
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # layer 1 of the second forward
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    cache.step = failing
    with torch.inference_mode():
        llama(input_ids=torch.tensor([[1, 2, 3]]), cache=cache, use_cache=True)
        with pytest.raises(KeyboardInterrupt):
            llama(input_ids=torch.tensor([[4]]), cache=cache, use_cache=True)
        with pytest.raises(SequenceError, match="half-appended"):
            llama(input_ids=torch.tensor([[4]]), cache=cache, use_cache=True)


def test_late_arrivals_do_not_spin(llama) -> None:
    engine = Engine(llama, num_blocks=16)
    done = engine.run([Request(0, [1, 2, 3], 2, arrival_step=10**9)])
    assert len(done[0].tokens) == 2
    assert len(engine.stats.timeline) <= 3


def test_float16_models_feed_every_cache() -> None:
    model = random_model("llama-tiny", seed=4, dtype=torch.float16)
    for kv_dtype in ("f32", "f16", "bf16", "i8"):
        done = Engine(model, kv_dtype=kv_dtype, num_blocks=16).run(_requests()[:1])
        assert len(done[0].tokens) == _requests()[0].max_new_tokens


def test_a_request_fills_exactly_its_blocks(llama) -> None:
    """A request stores its prompt and all new tokens but the last: 16 + 1
    fits one block of 16, 31 + 2 fits max_seq_len 32."""
    Engine(llama, num_blocks=1, block_size=16).run([Request(0, list(range(16)), 1)])
    Engine(llama, num_blocks=4, max_seq_len=32).run([Request(0, list(range(31)), 2)])


def test_dropout_refusal_leaves_the_cache_usable(llama) -> None:
    from llmir.integrations.transformers import LlmirCache, use_llmir_attention

    use_llmir_attention(llama)
    cache = LlmirCache.for_config(llama.config, num_blocks=8)
    llama.train()
    llama.config.attention_dropout = 0.1
    for layer in llama.model.layers:
        layer.self_attn.attention_dropout = 0.1
    try:
        with pytest.raises(ConfigError, match="dropout"):
            llama(input_ids=torch.tensor([[1, 2]]), cache=cache, use_cache=True)
    finally:
        llama.eval()
        for layer in llama.model.layers:
            layer.self_attn.attention_dropout = 0.0
    cache.reset()
    with torch.inference_mode():
        llama(input_ids=torch.tensor([[1, 2]]), cache=cache, use_cache=True)


def test_ir_step_refuses_another_cache() -> None:
    model = random_model("llama-tiny")
    step = IRLayerStep(model.config, kv_dtype="f32")
    with pytest.raises(ConfigError, match="IR was built for a cache of f32"):
        Engine(model, kv_dtype="f16", num_blocks=16, step=step).run(
            [Request(0, [1, 2], 2)]
        )
