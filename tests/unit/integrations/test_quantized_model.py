"""Issue 13's model gate for quantized caches: a randomly initialised small
Llama (hidden 512, 4 layers, GQA 8/2, head_dim 64, RoPE), teacher-forced
(the f32 cache's tokens fed back, so one early flip does not cascade): the
KL divergence of the next-token distribution from the f32 cache's, averaged
over 4 prompts x 64 positions, and the top-1 agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmir.integrations.transformers import random_model
from llmir.integrations.transformers.engine import Engine, Request

# kind: (KL bound, top-1 agreement bound)
GATES = {"i8": (1e-5, 0.97), "i4": (1e-3, 0.80)}
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def reference():
    model = random_model("llama-small", seed=0)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 1000, n).tolist() for n in (16, 24, 32, 40)]
    engine = Engine(model, num_blocks=64, record_logits=True)
    done = engine.run(
        [Request(i, p, max_new_tokens=NEW_TOKENS) for i, p in enumerate(prompts)]
    )
    return model, prompts, done


@pytest.mark.parametrize("kind", list(GATES))
def test_teacher_forced_kl_and_agreement(reference, kind: str) -> None:
    model, prompts, exact = reference
    engine = Engine(model, kv_dtype=kind, num_blocks=64, record_logits=True)
    requests = [
        Request(i, p, max_new_tokens=NEW_TOKENS, forced_tokens=exact[i].tokens)
        for i, p in enumerate(prompts)
    ]
    done = engine.run(requests)
    kls, agree, total = [], 0, 0
    for i in range(len(prompts)):
        p = torch.log_softmax(torch.stack(exact[i].logits).double(), dim=-1)
        q = torch.log_softmax(torch.stack(done[i].logits).double(), dim=-1)
        kls.append(float((p.exp() * (p - q)).sum(-1).mean()))
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        total += p.shape[0]
    kl = float(np.mean(kls))
    kl_bound, agreement_bound = GATES[kind]
    assert total == len(prompts) * NEW_TOKENS
    assert kl <= kl_bound, (kind, kl)
    assert agree / total >= agreement_bound, (kind, agree / total)
    # Something was quantized: the logits moved.
    assert kl > 0.0
