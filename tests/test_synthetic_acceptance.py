"""The synthetic acceptance policy: its schedules, the seeded generator's precision over 256 tokens on the zoo pair
(greedy and sampled, K 2 and 4, every parameter), repeatability, that kept tokens are the drafted ones and the next
token the target's own, the ngram drafter, adaptive K and both decoders; and the analytic prediction."""

from __future__ import annotations

import math
import re

import pytest
import torch

from specdec import AcceptanceConfig, GenerationConfig, SpeculationConfig, SpeculativeEngine, load_model, make_drafter
from specdec.analysis import expected_tokens_per_step, predicted_speedup
from specdec.errors import ConfigError
from specdec.generation import GenerationResult
from specdec.synthetic_acceptance import (
    SyntheticAcceptance,
    conditional_rates,
    geometric_rates,
    length_rates,
    unconditional_rates,
)

PROMPT = "def parse_args(argv):\n    "
TOKENS = 256
TOLERANCE = 0.02  # the bar over 256 generated tokens


@pytest.fixture(scope="module")
def pair():
    target = load_model("zoo:tiny-code-target", device="cpu", dtype="float32")
    draft = load_model("zoo:tiny-code-draft", device="cpu", dtype="float32")
    return target, draft


@pytest.fixture(scope="module")
def engine(pair) -> SpeculativeEngine:
    return SpeculativeEngine(*pair)


def synthetic(**parameter) -> AcceptanceConfig:
    return AcceptanceConfig(policy="synthetic", **parameter)


def run(engine, k: int, temperature: float = 0.0, seed: int = 0, tokens: int = TOKENS, **parameter):
    generation = GenerationConfig(max_new_tokens=tokens, temperature=temperature, seed=seed, stop_at_eos=False)
    return engine.generate(PROMPT, generation, SpeculationConfig(k=k, acceptance=synthetic(**parameter)))


def unconditional(result: GenerationResult) -> list[float]:
    """Measured accepted at i / steps that drafted i, per position."""
    m = result.metrics
    return [a / d for a, d in zip(m.accepted_by_position, m.drafted_by_position, strict=True) if d]


# ------------------------------------------------------------------------------------------------- schedules
def test_schedules_follow_vllms_meanings():
    rates = geometric_rates(0.8, 4)
    assert sum(rates) / 4 == pytest.approx(0.8)  # the mean acceptance rate at K
    conditional = conditional_rates(rates)
    assert conditional == pytest.approx([conditional[0]] * 4)  # one conditional rate at every position
    assert length_rates(3.5, 5) == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])  # vLLM's minimum-variance schedule
    assert length_rates(2.0, 4) == [1.0, 0.0, 0.0, 0.0]
    assert length_rates(9.0, 4) == [1.0] * 4  # a K too small for the length keeps everything
    assert conditional_rates([0.7, 0.4, 0.1]) == pytest.approx([0.7, 4 / 7, 0.25])
    assert conditional_rates([0.5, 0.0, 0.0]) == [0.5, 0.0, 0.0]
    assert unconditional_rates(synthetic(acceptance_rates=[0.9, 0.7, 0.5, 0.3]), 2) == [0.9, 0.7]
    assert geometric_rates(1.0, 3) == [1.0, 1.0, 1.0]


def test_the_generator_tracks_each_position_within_two_tokens_whatever_the_seed():
    rates = [0.9, 0.7, 0.5, 0.3]
    for seed in range(20):
        decider = SyntheticAcceptance(synthetic(acceptance_rates=rates), seed)
        kept = [decider.decide(4, 4) for _ in range(500)]
        for i, p in enumerate(rates):
            assert abs(sum(n > i for n in kept) - 500 * p) < 2
        assert len(set(kept)) == 5  # every outcome occurs: steps look random, not periodic in one value


def mean_rate_over_one_generation(decider: SyntheticAcceptance, k: int, tokens: int = TOKENS) -> float:
    """accepted / drafted when ``decider`` alone decides a generation's steps, cut by the token budget as the
    engine cuts them (a step drafts at most the tokens left but one)."""
    new, accepted, drafted = 1, 0, 0
    while new < tokens:
        budget = min(k, tokens - new - 1)
        kept = decider.decide(k, budget) if budget > 0 else 0
        accepted, drafted, new = accepted + kept, drafted + budget, new + kept + 1
    return accepted / drafted


@pytest.mark.parametrize("k", [2, 5, 8])
def test_a_mean_rate_holds_within_002_at_every_k_and_rate_whatever_the_seed(k):
    for rate in (0.5, 0.7, 0.85, 0.95):
        for seed in range(40):
            decider = SyntheticAcceptance(synthetic(acceptance_rate=rate), seed)
            assert abs(mean_rate_over_one_generation(decider, k) - rate) <= TOLERANCE, (rate, seed)


@pytest.mark.parametrize(
    ("parameter", "k", "message"),
    [
        ({"acceptance_rate": 0.0}, 4, "acceptance_rate must be in (0, 1], got 0.0"),
        ({"acceptance_rate": 1.2}, 4, "acceptance_rate must be in (0, 1], got 1.2"),
        ({"acceptance_rates": []}, 4, "acceptance_rates is empty"),
        ({"acceptance_rates": [0.9, 1.5]}, 2, "acceptance_rates entries must be numbers in [0, 1], got 1.5"),
        ({"acceptance_rates": [0.5, 0.8]}, 2, "acceptance_rates must not increase"),
        ({"acceptance_rates": [0.9, 0.8]}, 4, "acceptance_rates has 2 entries but K can reach 4"),
        ({"acceptance_length": 0.5}, 4, "acceptance_length must be >= 1, got 0.5"),
        ({"acceptance_length": 5.5}, 4, "acceptance_length must be in [1, K + 1] = [1, 5]"),
        ({}, 4, "policy synthetic needs exactly one of acceptance_rate, acceptance_rates or acceptance_length"),
        ({"acceptance_rate": 0.5, "acceptance_length": 2.0}, 4, "needs exactly one of"),
    ],
)
def test_bad_synthetic_parameters_are_refused_naming_them(parameter, k, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        SpeculationConfig(k=k, acceptance=synthetic(**parameter))


def test_synthetic_parameters_need_the_synthetic_policy():
    with pytest.raises(ConfigError, match="acceptance_rate only applies with policy synthetic, not lossless"):
        AcceptanceConfig(acceptance_rate=0.8)
    assert synthetic(acceptance_rates=[0.9, 0.8]).synthetic == {"acceptance_rates": [0.9, 0.8]}
    assert AcceptanceConfig().synthetic is None
    assert not synthetic(acceptance_rate=0.8).policy.is_lossless


# --------------------------------------------------------------------------------------------- on the zoo pair
@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampled"])
@pytest.mark.parametrize("k", [2, 4, 8])
def test_a_requested_rate_is_measured_within_002(engine, k, temperature):
    result = run(engine, k, temperature, acceptance_rate=0.7)
    assert result.metrics.new_tokens == TOKENS and result.metrics.policy == "synthetic"
    assert abs(result.metrics.acceptance_rate - 0.7) <= TOLERANCE
    assert result.metrics.synthetic == {"acceptance_rate": 0.7}


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampled"])
@pytest.mark.parametrize("k", [2, 4])
def test_requested_rates_per_position_are_measured_within_002(engine, k, temperature):
    rates = [0.9, 0.75, 0.55, 0.4]
    result = run(engine, k, temperature, acceptance_rates=rates)
    measured = unconditional(result)
    assert len(measured) == k
    assert max(abs(m - p) for m, p in zip(measured, rates, strict=False)) <= TOLERANCE
    m = result.metrics  # conditional acceptance follows: accepted at i / steps that reached i
    assert abs(m.accepted_by_position[1] / m.reached_by_position[1] - rates[1] / rates[0]) <= 2 * TOLERANCE


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampled"])
@pytest.mark.parametrize(("k", "length"), [(2, 2.4), (4, 3.2)])
def test_a_requested_length_is_measured_within_002(engine, k, length, temperature):
    result = run(engine, k, temperature, acceptance_length=length)
    assert abs(1.0 + sum(unconditional(result)) - length) <= TOLERANCE  # tokens per step, the bonus included
    full = [s for s in result.steps if s.drafted == k]  # steps the token budget did not cut short
    assert abs(sum(s.emitted for s in full) / len(full) - length) <= TOLERANCE


def test_a_seed_repeats_a_run_exactly_and_another_seed_changes_it(engine):
    first, again = (run(engine, 4, 0.8, seed=3, tokens=96, acceptance_rate=0.6) for _ in range(2))
    assert first.token_ids == again.token_ids
    assert [s.accepted for s in first.steps] == [s.accepted for s in again.steps]
    other = run(engine, 4, 0.8, seed=4, tokens=96, acceptance_rate=0.6)
    assert [s.accepted for s in other.steps] != [s.accepted for s in first.steps]


def greedy_choices(model, ids: list[int]) -> list[int]:
    """The model's argmax after each prefix of ``ids``, from one forward without a cache."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]  # [L, V]
    return logits.argmax(dim=-1).tolist()


def check_tokens(result: GenerationResult, prompt_ids: list[int], target, draft=None) -> int:
    """Every kept drafted token is the draft's greedy choice (when ``draft`` is given) and every other token the
    target's own greedy choice, at its position in the produced sequence. Returns the number of kept drafts."""
    ids = prompt_ids + result.token_ids[0]
    target_choice = greedy_choices(target.model, ids)
    draft_choice = greedy_choices(draft.model, ids) if draft is not None else None
    position = len(prompt_ids)  # the prefill's token
    assert ids[position] == target_choice[position - 1]
    position += 1
    kept = 0
    for step in result.steps:
        for _ in range(step.accepted):
            if draft_choice is not None:
                assert ids[position] == draft_choice[position - 1], f"kept token at {position} was not drafted"
            position, kept = position + 1, kept + 1
        if position < len(ids):  # the step's own token: recovered (after a forced rejection) or bonus
            assert ids[position] == target_choice[position - 1], f"token at {position} is not the target's"
        position += 1
    assert position >= len(ids)
    return kept


@pytest.mark.parametrize("decoder", ["auto", "generic"])
def test_kept_tokens_are_the_drafted_ones_and_the_next_is_the_targets(pair, decoder):
    target, draft = pair
    engine = SpeculativeEngine(target, draft, decoder=decoder)
    result = run(engine, 4, tokens=96, acceptance_rate=0.6)
    assert result.metrics.decoder_path == ("generic" if decoder == "generic" else "fast-llama")
    kept = check_tokens(result, engine.encode(PROMPT)[0], target, draft)
    assert 0 < kept < result.metrics.drafted_tokens  # both kept and forcibly rejected drafts occurred
    # It is not lossless: the forced output leaves the target's greedy text.
    greedy = engine.generate(PROMPT, GenerationConfig(max_new_tokens=96, stop_at_eos=False), SpeculationConfig(k=4))
    assert greedy.token_ids != result.token_ids


@pytest.mark.parametrize(
    ("method", "options"), [("ngram", {}), ("suffix", {}), ("layerskip", {"layers": 3})], ids=["ngram", "suffix", "ls"]
)
def test_model_free_drafters_keep_only_what_they_drafted(pair, method, options):
    target, _ = pair
    engine = SpeculativeEngine(target, make_drafter(method, **options))
    rates = [0.9, 0.7, 0.5, 0.3]
    result = run(engine, 4, tokens=TOKENS if method == "ngram" else 96, acceptance_rates=rates)
    steps, m = result.steps, result.metrics
    if method != "layerskip":  # lookup drafters propose fewer than K where nothing matches
        assert any(s.drafted < 4 for s in steps) and any(s.drafted > 0 for s in steps)
    assert all(s.accepted <= s.drafted for s in steps)  # a position not drafted cannot be accepted
    for i, p in enumerate(rates):  # each drafted position tracks its rate to within two tokens
        assert abs(m.accepted_by_position[i] - p * m.drafted_by_position[i]) < 2
    check_tokens(result, engine.encode(PROMPT)[0], target)


def test_adaptive_k_keeps_the_requested_rate(engine):
    from specdec import AdaptiveKConfig

    speculation = SpeculationConfig(
        k=2,
        adaptive=AdaptiveKConfig(min_k=1, max_k=6, target_acceptance=0.7, window=4),
        acceptance=synthetic(acceptance_rate=0.8),
    )
    generation = GenerationConfig(max_new_tokens=TOKENS, stop_at_eos=False)
    result = engine.generate(PROMPT, generation, speculation)
    assert len({s.k for s in result.steps}) > 1  # K moved
    assert abs(result.metrics.acceptance_rate - 0.8) <= TOLERANCE


# ----------------------------------------------------------------------------------------------- the prediction
def test_the_predicted_speedup_is_the_yield_over_the_step_cost():
    assert expected_tokens_per_step([1.0, 1.0]) == 3.0
    assert predicted_speedup([1.0, 1.0], cost_ratio=0.0) == 3.0
    a, k = 0.8, 4
    iid = (1 - a ** (k + 1)) / (1 - a)  # Leviathan et al.'s yield for one conditional rate
    assert predicted_speedup([a**i for i in range(1, k + 1)], cost_ratio=0.05) == pytest.approx(iid / 1.2)
    assert predicted_speedup([0.5], cost_ratio=0.1, verify_cost=1.5) == pytest.approx(1.5 / 1.6)
    assert math.isclose(expected_tokens_per_step(geometric_rates(0.8, 4)), 1 + 0.8 * 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_fast_path_the_rate_holds_and_tokens_are_exact():
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 argmaxes comparable with the eager forward
    target = load_model("zoo:tiny-code-target", device="cuda", dtype="float32")
    draft = load_model("zoo:tiny-code-draft", device="cuda", dtype="float32")
    engine = SpeculativeEngine(target, draft)
    result = run(engine, 4, acceptance_rate=0.7)
    assert result.metrics.decoder_path == "fast-llama" and abs(result.metrics.acceptance_rate - 0.7) <= TOLERANCE
    check_tokens(result, engine.encode(PROMPT)[0], target, draft)  # against transformers' own forward on the GPU
