"""The comparison rules, on records built by hand."""

from __future__ import annotations

import dataclasses

import pytest
from records import BASE, HERE, record

from pytest_specdec.gating import Outcome, Status, Tolerances, compare

now = record


def outcomes(verdict) -> dict[str, Outcome]:
    return {c.metric: c.outcome for c in verdict.checks}


def test_an_unchanged_case_passes_and_no_baseline_is_reported():
    assert compare(now(), BASE, Tolerances()).status is Status.PASS
    assert compare(now(), None, Tolerances()).status is Status.NO_BASELINE
    assert compare(now(digest="other"), BASE, Tolerances()).status is Status.STALE


@pytest.mark.parametrize(
    ("changes", "metric"),
    [
        ({"acceptance_rate": 0.57}, "acceptance_rate"),
        ({"tokens_per_forward": 1.9}, "tokens_per_forward"),
        ({"output_hash": "zzz"}, "output_hash"),
        ({"speedup": 0.95}, "speedup"),
        ({"tokens_per_second": 140.0}, "tokens_per_second"),
    ],
)
def test_a_fall_beyond_tolerance_regresses(changes, metric):
    verdict = compare(now(**changes), BASE, Tolerances())
    assert verdict.status is Status.REGRESSION and [c.metric for c in verdict.regressions()] == [metric]
    assert verdict.message("b.json").startswith(f"regressed against b.json: {metric}\n  {metric}: baseline ")


def test_within_tolerance_passes_and_a_rise_is_an_improvement():
    assert compare(now(acceptance_rate=0.59, speedup=1.4, tokens_per_second=200.0), BASE, Tolerances()).status is (
        Status.PASS
    )
    verdict = compare(now(speedup=1.7), BASE, Tolerances())
    assert verdict.status is Status.IMPROVED and verdict.summary() == "improved: speedup"


def test_other_software_reports_the_hash_skips_times_and_widens_deterministic_tolerances():
    other = dataclasses.replace(HERE, torch="2.12.0+cpu")
    verdict = compare(
        now(environment=other, output_hash="zzz", tokens_per_second=10.0, acceptance_rate=0.55), BASE, Tolerances()
    )
    assert verdict.status is Status.PASS
    assert outcomes(verdict)["output_hash"] is Outcome.CHANGED
    assert outcomes(verdict)["tokens_per_second"] is Outcome.NOT_COMPARED
    assert compare(now(environment=other, acceptance_rate=0.5), BASE, Tolerances()).status is Status.REGRESSION


def test_sampled_outputs_are_reported_not_gated():
    verdict = compare(now(greedy=False, output_hash="zzz"), dataclasses.replace(BASE, greedy=False), Tolerances())
    assert verdict.status is Status.PASS and outcomes(verdict)["output_hash"] is Outcome.CHANGED


@pytest.mark.parametrize(
    ("baseline", "current", "status"), [(1.05, 0.96, Status.PASS), (1.05, 0.94, Status.REGRESSION)]
)
def test_the_speedup_may_fall_by_its_tolerance_and_no_more(baseline, current, status):
    """10% by default: 1.05x may fall to 0.945x (below 1.0x included: near 1.0x that is noise, not a regression)."""
    verdict = compare(now(speedup=current), now(speedup=baseline), Tolerances())
    assert verdict.status is status
    if status is Status.REGRESSION:
        assert "speedup: baseline 1.05, now 0.94, tolerance -10% (fails below 0.945)" in verdict.message("b.json")


def test_the_speedup_tolerance_widens_against_other_software():
    other = dataclasses.replace(HERE, transformers="5.0.0")
    assert compare(now(speedup=0.8), now(speedup=1.0), Tolerances()).status is Status.REGRESSION
    assert compare(now(speedup=0.8, environment=other), now(speedup=1.0), Tolerances()).status is Status.PASS
    assert compare(now(speedup=0.6, environment=other), now(speedup=1.0), Tolerances()).status is Status.REGRESSION


def test_the_verdict_says_when_the_baseline_is_of_other_software():
    other = dataclasses.replace(HERE, transformers="5.0.0")
    verdict = compare(now(environment=other), BASE, Tolerances())
    assert verdict.status is Status.PASS
    assert verdict.summary() == "pass (baseline of other software or device: output hash not gated, " + (
        "acceptance, tokens/forward and speedup tolerances x3)"
    )
    assert compare(now(), BASE, Tolerances()).summary() == "pass"
