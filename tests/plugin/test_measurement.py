"""The speedup a case reports: rounds paired with the autoregressive case's, each timed from its steps' fastest
times across rounds (pytest_specdec/measurement.py, runner.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tiny_models import loaded, make_model

from pytest_specdec.measurement import Round, _steady_speedup, steady_seconds
from pytest_specdec.prompts import PromptSet
from pytest_specdec.runner import Reference, measure
from specdec.config import GenerationConfig, SpeculationConfig
from specdec.engine import SpeculativeEngine
from specdec.metrics import StepMetrics


def _run(step_ms: list[float], total_s: float, new_tokens: int = 4) -> SimpleNamespace:
    """What steady_seconds reads of one generate call: its steps' times and its total (a GenerationResult's shape)."""
    steps = [
        StepMetrics(k=2, drafted=2, accepted=1, emitted=2, draft_ms=ms / 2, verify_ms=ms / 2, itl_ms=ms)
        for ms in step_ms
    ]
    return SimpleNamespace(steps=steps, metrics=SimpleNamespace(total_time_s=total_s, new_tokens=new_tokens))


def _round(*runs: SimpleNamespace) -> Round:
    seconds = tuple(r.metrics.total_time_s for r in runs)
    return Round(results=runs, seconds=sum(seconds), categories=(None,) * len(runs), batch_seconds=seconds)  # type: ignore[arg-type]


def test_steady_time_takes_each_steps_fastest_time_across_rounds():
    # step 1 was interrupted in round 1, step 2 in round 2; outside the steps: 5 ms and 8 ms
    rounds = [_round(_run([40.0, 10.0], 0.055)), _round(_run([10.0, 50.0], 0.068))]
    assert steady_seconds(rounds) == pytest.approx(0.005 + 0.010 + 0.010)


def test_steady_time_adds_up_over_batches():
    first = _round(_run([10.0], 0.012), _run([20.0, 20.0], 0.041))
    second = _round(_run([12.0], 0.013), _run([30.0, 20.0], 0.050))
    # batch 1: outside min(2, 1) ms + step 10 ms; batch 2: outside min(1, 0) ms + steps 20 + 20 ms
    assert steady_seconds([first, second]) == pytest.approx((0.001 + 0.010) + (0.0 + 0.020 + 0.020))


def test_no_steady_time_when_the_rounds_took_different_steps():
    assert steady_seconds([_round(_run([10.0], 0.01)), _round(_run([10.0, 10.0], 0.02))]) is None
    assert _steady_speedup([_round(_run([10.0], 0.01)), _round(_run([10.0, 10.0], 0.02))], []) is None


def test_the_steady_speedup_is_the_ratio_of_tokens_per_steady_second():
    spec = [_round(_run([10.0, 10.0], 0.02)), _round(_run([30.0, 10.0], 0.04))]  # 4 tokens in 20 ms
    autoregressive = [_round(_run([10.0] * 4, 0.04)), _round(_run([10.0, 10.0, 20.0, 10.0], 0.05))]  # 4 in 40 ms
    assert _steady_speedup(spec, autoregressive) == pytest.approx(2.0)


def test_every_round_is_paired_with_an_autoregressive_round_on_the_same_prompts():
    target = loaded(make_model("llama", seed=0, layers=2), "target")
    draft = loaded(make_model("llama", seed=1, layers=1), "draft")
    case = SimpleNamespace(  # the fields of a suite Case that measure() reads
        prompts=PromptSet(source="inline", prompts=((5, 6, 7), (8, 9, 10))),
        batch_size=1,
        generation=GenerationConfig(max_new_tokens=6),
        speculation=SpeculationConfig(k=2),
        threads=None,
        rounds=3,
        warmup_rounds=1,
    )
    reference_case = SimpleNamespace(**{**vars(case), "speculation": None})
    calls: list[str] = []
    spec_engine, ar_engine = SpeculativeEngine(target, draft), SpeculativeEngine(target, None)
    for name, engine in (("spec", spec_engine), ("ar", ar_engine)):
        generate = engine.generate

        def recording(*args, _name=name, _generate=generate, **kwargs):
            calls.append(_name)
            return _generate(*args, **kwargs)

        engine.generate = recording  # type: ignore[method-assign]
    measurement = measure(case, spec_engine, None, Reference(reference_case, ar_engine))  # type: ignore[arg-type]
    assert calls == ["ar", "ar", "spec", "spec"] * 4  # warm-up and timed rounds alike, two prompts each
    assert len(measurement.paired_speedups) == 3 and measurement.steady_speedup is not None
    assert measurement.paired_speedup == measurement.steady_speedup > 0
