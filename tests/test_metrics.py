"""The run metrics' definitions: tau, acceptance by draft position, TPOT and ITL, on hand-built steps (pure
functions), and their consistency with the counts of a real run."""

from __future__ import annotations

import pytest
from tiny_models import loaded, make_model

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, make_drafter
from specdec.metrics import (
    PositionCounts,
    StepMetrics,
    itl_percentiles,
    mean_accepted_length,
    percentile,
    row_latencies,
    time_per_output_token,
)


def step(drafted: int, accepted: int, itl_ms: float = 10.0) -> StepMetrics:
    return StepMetrics(
        k=4, drafted=drafted, accepted=accepted, emitted=accepted + 1, draft_ms=1.0, verify_ms=2.0, itl_ms=itl_ms
    )


# Four steps of K = 3: all accepted; rejected at position 1; rejected at position 0; a step with 2 drafted (the
# budget's end) that accepted 1.
STEPS = [step(3, 3), step(3, 1), step(3, 0), step(2, 1)]


def test_position_counts_follow_their_definitions():
    counts = PositionCounts.of_steps(STEPS)
    assert counts.drafted == (4, 4, 3)  # position 2 was drafted by the three K = 3 steps only
    assert counts.reached == (4, 3, 1)  # a step that rejects position i reaches no position after it
    assert counts.accepted == (3, 1, 1)
    assert sum(counts.accepted) == sum(s.accepted for s in STEPS)
    assert sum(counts.drafted) == sum(s.drafted for s in STEPS)
    assert counts.conditional() == (3 / 4, 1 / 3, 1 / 1)
    assert counts.unconditional() == (3 / 4, 1 / 4, 1 / 3)


def test_a_position_no_step_reached_has_no_rate():
    counts = PositionCounts.of_steps([step(3, 0), step(3, 0)])
    assert counts.reached == (2, 0, 0) and counts.conditional() == (0.0, None, None)
    assert counts.unconditional() == (0.0, 0.0, 0.0)
    assert PositionCounts.of_steps([step(0, 0)]) == PositionCounts()  # steps that drafted nothing count nowhere


def test_position_counts_add_up_over_batches_of_different_widths():
    a, b = STEPS[:2], [step(1, 1), step(1, 0)]
    total = PositionCounts.of_steps(a) + PositionCounts.of_steps(b)
    assert total == PositionCounts.of_steps(a + b)
    assert total.drafted == (4, 2, 2) and total.accepted == (3, 1, 1)


def test_tau_counts_every_step_with_its_bonus_token():
    assert mean_accepted_length(STEPS) == (4 + 2 + 1 + 2) / 4
    assert mean_accepted_length([step(0, 0)] * 5) == 1.0  # autoregressive: one token per step
    assert mean_accepted_length([]) is None


def test_tpot_is_the_steps_time_over_the_tokens_after_the_first():
    steps = [step(3, 3, itl_ms=20.0), step(3, 0, itl_ms=10.0)]  # 4 + 1 tokens in 30 ms
    assert time_per_output_token(steps) == pytest.approx(0.030 / 5)
    assert time_per_output_token([]) is None


def test_percentiles_interpolate_linearly_between_ranks():
    values = [0.4, 0.1, 0.3, 0.2]  # sorted: 0.1 0.2 0.3 0.4
    assert percentile(values, 50) == pytest.approx(0.25)
    assert percentile(values, 0) == 0.1 and percentile(values, 100) == 0.4
    assert percentile(values, 90) == pytest.approx(0.37)  # rank 2.7: 0.3 + 0.7 * 0.1
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None
    assert itl_percentiles([float(i) for i in range(101)]) == (50.0, 90.0, 99.0)


def test_a_rows_latency_ends_at_the_step_that_committed_its_last_token():
    steps = [step(3, 3, itl_ms=20.0), step(3, 0, itl_ms=10.0), step(3, 1, itl_ms=30.0)]
    counts = [(5, 2, 1), (6, 3, 2), (8, 5, 4)]  # three rows' new tokens after each step
    lengths = [5, 4, 1]  # row 0 has its 5 after step 0, row 1 its 4 after step 2, row 2 its one at the prefill
    assert row_latencies(0.5, steps, counts, lengths) == pytest.approx((0.52, 0.56, 0.5))
    assert row_latencies(0.5, [], [], [1, 0]) == (0.5, 0.5)  # one token (or none): the first token's time


@pytest.fixture(scope="module")
def models():
    return make_model("llama", seed=1, layers=2), make_model("llama", seed=2, layers=1)


PROMPTS = [[5, 17, 99, 240, 31, 5, 17], [250, 4, 4, 61, 9, 13, 200, 77]]


@pytest.mark.parametrize("draft", ["model", "ngram"])
def test_a_runs_metrics_agree_with_its_steps(models, draft):
    target, draft_model = models
    drafter = loaded(draft_model, "d") if draft == "model" else make_drafter("ngram")
    engine = SpeculativeEngine(loaded(target, "t"), drafter)
    generation = GenerationConfig(max_new_tokens=24, stop_at_eos=False)
    result = engine.generate(PROMPTS, generation, SpeculationConfig(k=3))
    m, steps = result.metrics, result.steps
    assert sum(m.accepted_by_position) == m.accepted_tokens and sum(m.drafted_by_position) == m.drafted_tokens
    assert m.position_counts == PositionCounts.of_steps(steps)
    assert m.acceptance_by_position == m.position_counts.conditional()
    row_steps = sum(s.rows for s in steps)  # counts are per row of each step (per-row acceptance)
    assert m.mean_accepted_length == pytest.approx((m.accepted_tokens + row_steps) / row_steps)
    # The prefill's token plus each step's (tau per row-step) is every row's length: 24 tokens.
    assert len(PROMPTS) + m.mean_accepted_length * row_steps == pytest.approx(len(PROMPTS) * generation.max_new_tokens)
    decode_s = sum(s.itl_ms for s in steps) / 1000.0
    assert 0 < decode_s <= m.total_time_s - m.time_to_first_token_s
    assert m.tpot_s == pytest.approx(decode_s / (generation.max_new_tokens - 1))
    assert m.itl_p50_s is not None and m.itl_p90_s is not None and m.itl_p99_s is not None
    assert min(s.itl_ms for s in steps) / 1000.0 <= m.itl_p50_s <= m.itl_p90_s <= m.itl_p99_s
    # Per-row acceptance: a row is done after the last step it took part in (rows drop out as they finish).
    both = sum(s.itl_ms for s in steps if s.rows == len(PROMPTS)) / 1000.0
    ttft = m.time_to_first_token_s
    assert sorted(m.row_latency_s) == pytest.approx([ttft + both, ttft + decode_s])


def test_the_autoregressive_run_has_tau_one_and_no_positions(models):
    engine = SpeculativeEngine(loaded(models[0], "t"))
    result = engine.generate(PROMPTS[0], GenerationConfig(max_new_tokens=8, stop_at_eos=False))
    m = result.metrics
    assert m.mean_accepted_length == 1.0 and m.steps == 7
    assert m.accepted_by_position == m.drafted_by_position == m.acceptance_by_position == ()
    assert len(result.steps) == 7 and all(s.itl_ms > 0 for s in result.steps)
    decode_s = sum(s.itl_ms for s in result.steps) / 1000.0
    assert m.row_latency_s == pytest.approx((m.time_to_first_token_s + decode_s,))


def test_one_new_token_has_no_steps_and_no_decode_metrics(models):
    result = SpeculativeEngine(loaded(models[0], "t")).generate(PROMPTS[0], GenerationConfig(max_new_tokens=1))
    m = result.metrics
    assert m.steps == 0 and m.mean_accepted_length is None and m.tpot_s is None and m.itl_p50_s is None
