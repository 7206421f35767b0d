"""Extreme but legal temperatures: finite distributions that sum to 1, and the exact limits as T -> 0 and T -> inf."""

from __future__ import annotations

import pytest
import torch
from tiny_models import loaded, make_model, make_tokenizer

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine
from specdec.errors import ConfigError
from specdec.sampling import logits_to_probs


@pytest.mark.parametrize("temperature", [1e-45, 1e-40, 1e-30, 1e-8])
def test_a_tiny_temperature_gives_the_argmax_not_nan(temperature):
    logits = torch.tensor([[3.0, 7.5, -2.0, 7.4999], [0.0, -1e4, 5.0, float("-inf")]])
    probs = logits_to_probs(logits, GenerationConfig(temperature=temperature))
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(2))
    torch.testing.assert_close(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))


def test_a_tiny_temperature_splits_exact_ties_evenly():
    logits = torch.tensor([2.0, 9.0, 9.0, -3.0])
    probs = logits_to_probs(logits, GenerationConfig(temperature=1e-40, top_k=3, top_p=0.99))
    torch.testing.assert_close(probs, torch.tensor([0.0, 0.5, 0.5, 0.0]))


@pytest.mark.parametrize("temperature", [1e30, 1e39, 1e300])
def test_a_huge_temperature_gives_the_uniform_distribution_over_unmasked_tokens(temperature):
    logits = torch.tensor([3.0, 7.5, float("-inf"), -2.0])
    probs = logits_to_probs(logits, GenerationConfig(temperature=temperature))
    torch.testing.assert_close(probs, torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3]))


@pytest.mark.parametrize("temperature", [float("inf"), float("nan")])
def test_a_temperature_that_is_not_a_finite_number_is_refused(temperature):
    with pytest.raises(ConfigError, match=r"temperature must be a finite number >= 0, got (inf|nan)"):
        GenerationConfig(temperature=temperature)


@pytest.mark.parametrize("with_draft", [True, False], ids=["speculative", "autoregressive"])
def test_generating_at_a_tiny_temperature_gives_the_greedy_output(with_draft):
    tokenizer = make_tokenizer()
    target = loaded(make_model("llama", seed=0, layers=2), "target", tokenizer)
    draft = loaded(make_model("llama", seed=4, layers=1), "draft", tokenizer) if with_draft else None
    engine = SpeculativeEngine(target, draft)
    speculation = SpeculationConfig(k=3)
    prompt = "def parse_args("
    greedy = engine.generate(prompt, GenerationConfig(max_new_tokens=12, stop_at_eos=False), speculation)
    cold = engine.generate(
        prompt, GenerationConfig(max_new_tokens=12, temperature=1e-40, stop_at_eos=False, seed=3), speculation
    )
    assert cold.token_ids == greedy.token_ids
    if with_draft:
        assert cold.metrics.acceptance_rate == greedy.metrics.acceptance_rate
