"""Greedy speculative output equals the target's own `generate(do_sample=False)`, token for token, in float32."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, VOCAB, loaded, make_model

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine

MAX_NEW = 24
PROMPTS = [[5, 17, 99, 240, 31], [250, 4, 4, 61, 9, 13, 200, 77, 120, 3, 45], [42]]


def reference(model, prompt: list[int], max_new: int = MAX_NEW) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False)
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module", params=FAMILIES)
def family_models(request):
    family = request.param
    target = make_model(family, seed=1, layers=2)
    # the unrelated draft is another architecture with other weights: it agrees with the target by chance only
    other_family = FAMILIES[(FAMILIES.index(family) + 1) % len(FAMILIES)]
    unrelated = make_model(other_family, seed=2, layers=1)
    expected = [reference(target, p) for p in PROMPTS]
    return family, target, unrelated, expected


@pytest.mark.parametrize("k", range(1, 9))
def test_draft_equal_to_target_accepts_everything(family_models, k):
    family, target, _, expected = family_models
    engine = SpeculativeEngine(loaded(target, family), loaded(target, f"{family}-copy"))
    for prompt, want in zip(PROMPTS, expected, strict=True):
        result = engine.generate(prompt, GenerationConfig(max_new_tokens=MAX_NEW), SpeculationConfig(k=k))
        assert result.token_ids[0] == want
        if len(want) == MAX_NEW:  # no early EOS: every drafted token matched
            assert result.metrics.acceptance_rate == 1.0
            assert result.metrics.mean_tokens_per_forward > 1.0


@pytest.mark.parametrize("k", range(1, 9))
def test_unrelated_draft_keeps_the_output_exact(family_models, k):
    family, target, unrelated, expected = family_models
    engine = SpeculativeEngine(loaded(target, family), loaded(unrelated, "unrelated"))
    acceptance = []
    for prompt, want in zip(PROMPTS, expected, strict=True):
        result = engine.generate(prompt, GenerationConfig(max_new_tokens=MAX_NEW), SpeculationConfig(k=k))
        assert result.token_ids[0] == want
        acceptance.append(result.metrics.acceptance_rate or 0.0)
    assert sum(acceptance) / len(acceptance) < 0.2


def test_autoregressive_baseline_equals_generate(family_models):
    family, target, _, expected = family_models
    engine = SpeculativeEngine(loaded(target, family))
    for prompt, want in zip(PROMPTS, expected, strict=True):
        result = engine.generate(prompt, GenerationConfig(max_new_tokens=MAX_NEW))
        assert result.token_ids[0] == want
        assert result.metrics.acceptance_rate is None
        assert result.metrics.target_forwards == len(want)


def test_stops_at_eos_like_generate():
    target = make_model("llama", seed=3)
    draft = make_model("llama", seed=4, layers=1)
    free = reference(target, PROMPTS[1], max_new=40)
    eos = free[12]  # a token the target really produces, mid-sequence
    target.generation_config.eos_token_id = eos
    target.config.eos_token_id = eos
    want = reference(target, PROMPTS[1], max_new=40)
    assert want[-1] == eos and len(want) < 40
    for k in (1, 3, 6):
        for draft_model in (target, draft):
            engine = SpeculativeEngine(loaded(target, "t"), loaded(draft_model, "d"))
            result = engine.generate(PROMPTS[1], GenerationConfig(max_new_tokens=40), SpeculationConfig(k=k))
            assert result.token_ids[0] == want


@pytest.mark.parametrize("k", [2, 5])
def test_padded_batch_rows_equal_their_own_greedy_output(k):
    target = make_model("qwen2", seed=5)
    draft = make_model("qwen2", seed=6, layers=1)
    engine = SpeculativeEngine(loaded(target, "t"), loaded(draft, "d"))
    result = engine.generate(PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW), SpeculationConfig(k=k))
    assert result.metrics.batch_size == len(PROMPTS)
    for prompt, got in zip(PROMPTS, result.token_ids, strict=True):
        assert got == reference(target, prompt)


def test_k_larger_than_the_remaining_budget_is_clipped():
    target = make_model("llama", seed=8)
    engine = SpeculativeEngine(loaded(target, "t"), loaded(target, "d"))
    result = engine.generate(PROMPTS[0], GenerationConfig(max_new_tokens=3), SpeculationConfig(k=8))
    assert result.token_ids[0] == reference(target, PROMPTS[0], max_new=3)
    assert all(step.drafted <= 2 for step in result.steps)
    assert max(result.token_ids[0]) < VOCAB
