"""Baselines: recorded by --specdec-update-baselines, passed by an unchanged run, failed by a planted regression."""

from __future__ import annotations

import json
import shutil

from tiny_models import make_model

# Wide timing tolerances: these tiny models run in milliseconds on a shared machine; the planted slowdown is far
# larger. Deterministic metrics keep the default tolerances.
PAIR = """
defaults:
  max_new_tokens: 16
  rounds: 3
  warmup_rounds: 1
  prompts: ["def parse_args(", "for index, value in"]
  tolerances: {{speedup: 0.6, tokens_per_second: 0.95}}
cases:
  - name: pair
    target: {target}
    draft: {draft}
    k: [2, 4]
    temperature: [0, 0.8]
"""

SLOW_DRAFT = """
import time

import pytest
from specdec.drafters.model import ModelDrafter


@pytest.fixture(autouse=True)
def _planted_slowdown(monkeypatch):
    propose = ModelDrafter.propose

    def slow_propose(self, *args, **kwargs):
        time.sleep(0.03)
        return propose(self, *args, **kwargs)

    monkeypatch.setattr(ModelDrafter, "propose", slow_propose)
"""

# Interference that lasts one attempt: the drafter is slow only while the case is measured the first time.
FIRST_ATTEMPT_BURST = """
import time

import pytest
from pytest_specdec.session import BenchSession
from specdec.drafters.model import ModelDrafter


@pytest.fixture(autouse=True)
def _burst(monkeypatch):
    attempts = {}  # case id -> attempts so far
    current = []  # the attempt being measured: [case id]
    attempt, propose = BenchSession._attempt, ModelDrafter.propose

    def counted_attempt(self, case, *args, **kwargs):
        attempts[case.id] = attempts.get(case.id, 0) + 1
        current[:] = [case.id]
        return attempt(self, case, *args, **kwargs)

    def slow_propose(self, *args, **kwargs):
        if attempts[current[0]] == 1:
            time.sleep(0.03)
        return propose(self, *args, **kwargs)

    monkeypatch.setattr(BenchSession, "_attempt", counted_attempt)
    monkeypatch.setattr(ModelDrafter, "propose", slow_propose)
"""


def _pair_suite(bench) -> None:
    draft = bench.path / "draft"
    if not draft.exists():
        shutil.copytree(bench.models["same"], draft)  # a draft equal to the target: greedy acceptance 1.0
    bench.suite(PAIR.replace("{draft}", str(draft)))


def test_update_writes_a_baseline_that_the_next_run_passes(bench):
    _pair_suite(bench)
    recorded = bench.run("--specdec-suite", "suite", "--specdec-update-baselines")
    recorded.assert_outcomes(passed=6)
    recorded.stdout.fnmatch_lines(["specdec: wrote *baselines/suite/test-machine.json (6 recorded, 0 kept)"])
    baseline = bench.baseline()
    assert baseline["schema_version"] == 1 and baseline["machine_class"] == "test-machine"
    assert {"torch", "transformers", "python"} <= set(baseline["software"])
    assert "cpu" in baseline["machine"] and "id" in baseline["commit"]
    greedy = baseline["cases"]["pair[k=4,cpu,fp32,bs=1]"]
    assert greedy["acceptance_rate"] == 1.0 and greedy["greedy"] and greedy["speedup"] > 0
    assert baseline["cases"]["pair[ar,cpu,fp32,bs=1]"]["speedup"] is None
    assert [p.name for p in (bench.path / "baselines" / "suite").iterdir()] == ["test-machine.json"]  # no temp left

    again = bench.run("--specdec-suite", "suite")
    again.assert_outcomes(passed=6)
    assert "no baseline" not in again.stdout.str() and "REGRESSION" not in again.stdout.str()


def test_a_planted_slowdown_fails_against_the_baseline(bench):
    _pair_suite(bench)
    bench.run("--specdec-suite", "suite", "--specdec-update-baselines").assert_outcomes(passed=6)
    bench.pytester.makeconftest(SLOW_DRAFT)
    result = bench.run("--specdec-suite", "suite", "-k", "greedy")
    result.assert_outcomes(passed=1, failed=2)  # the autoregressive case has no draft to slow down
    result.stdout.fnmatch_lines(
        [
            "*regressed against baselines/suite/test-machine.json: speedup*",
            "  speedup: baseline *, now *, tolerance -60% (fails below *)",
            "  (measured 3 times, judged on all attempts' rounds: the first attempt alone regressed (speedup *))",
        ]
    )
    result.stdout.re_match_lines([r"pair\[k=4,cpu,fp32,bs=1\] +specdec +model +4 +1\.000 .* REGRESSION: speedup"])


def test_a_slowdown_in_the_first_attempt_only_passes_on_the_second(bench):
    _pair_suite(bench)
    bench.run("--specdec-suite", "suite", "--specdec-update-baselines", "-k", "greedy").assert_outcomes(passed=3)
    bench.pytester.makeconftest(FIRST_ATTEMPT_BURST)
    result = bench.run("--specdec-suite", "suite", "-k", "greedy")
    result.assert_outcomes(passed=3)
    # each speculative case regressed in its first attempt; the pooled rounds of two passed
    result.stdout.re_match_lines(
        [r"pair\[k=4,cpu,fp32,bs=1\] .* pass \(measured twice, judged on all attempts' rounds"]
    )


def test_an_acceptance_drop_fails_against_the_baseline(bench):
    _pair_suite(bench)
    bench.run("--specdec-suite", "suite", "--specdec-update-baselines", "-k", "greedy").assert_outcomes(passed=3)
    make_model("llama", seed=5, layers=1).save_pretrained(bench.path / "draft")  # a worse draft, same name
    result = bench.run("--specdec-suite", "suite", "-k", "greedy")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*regressed against baselines/suite/test-machine.json: acceptance_rate, tokens_per_forward*",
            "  acceptance_rate: baseline 1, now *, tolerance ±0.02",
        ]
    )
    assert "output_hash: baseline" not in result.stdout.str().split("regressed against")[1].split("(ok)")[0]


def test_a_case_without_baseline_is_reported_unless_strict(bench):
    _pair_suite(bench)
    result = bench.run("--specdec-suite", "suite", "-k", "greedy")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["3 case(s) have no baseline in *test-machine.json: record with --specdec-update-*"])
    strict = bench.run("--specdec-suite", "suite", "-k", "greedy", "--specdec-strict")
    strict.assert_outcomes(failed=3)
    strict.stdout.fnmatch_lines(["*no baseline for pair?k=2,cpu,fp32,bs=1? in *(--specdec-strict)*"])


def test_an_update_keeps_cases_not_run_and_refuses_failed_ones(bench, tmp_path):
    _pair_suite(bench)
    bench.run("--specdec-suite", "suite", "--specdec-update-baselines").assert_outcomes(passed=6)
    before = bench.baseline()["cases"]
    bench.pytester.makeconftest(
        """
import pytest
from specdec.engine import SpeculativeEngine


@pytest.fixture(autouse=True)
def _k2_breaks(request, monkeypatch):
    if "k=2" in request.node.name:
        monkeypatch.setattr(SpeculativeEngine, "generate", lambda *a, **k: 1 / 0)
"""
    )
    result = bench.run("--specdec-suite", "suite", "--specdec-update-baselines", "-k", "greedy")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["specdec: wrote *test-machine.json (2 recorded, 4 kept, 1 failed and not recorded: pair?k=2,cpu,fp32,bs=1?)"]
    )
    after = bench.baseline()["cases"]
    assert set(after) == set(before)
    assert after["pair[k=2,cpu,fp32,bs=1]"] == before["pair[k=2,cpu,fp32,bs=1]"]  # the failed case: untouched
    assert after["pair[k=4,cpu,fp32,bs=1,t=0.8]"] == before["pair[k=4,cpu,fp32,bs=1,t=0.8]"]  # not run: kept
    assert after["pair[k=4,cpu,fp32,bs=1]"]["recorded_at"] >= before["pair[k=4,cpu,fp32,bs=1]"]["recorded_at"]


def test_a_changed_suite_entry_makes_its_baseline_stale(bench):
    _pair_suite(bench)
    bench.run("--specdec-suite", "suite", "--specdec-update-baselines", "-k", "greedy and k4")
    bench.suite(PAIR.replace("{draft}", str(bench.path / "draft")).replace("def parse_args(", "class Config:"))
    result = bench.run("--specdec-suite", "suite", "-k", "greedy and k4")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r"pair\[k=4,cpu,fp32,bs=1\] .* stale baseline \(the suite entry changed.*"])


def test_a_corrupt_baseline_file_fails_collection_naming_it(bench):
    _pair_suite(bench)
    folder = bench.path / "baselines" / "suite"
    folder.mkdir(parents=True)
    (folder / "test-machine.json").write_text('{"schema_version": 99, "cases": {}}')
    result = bench.run("--specdec-suite", "suite")
    result.stdout.fnmatch_lines(["*test-machine.json has schema_version 99, this plugin reads 1*"])
    assert result.ret == 2


TERMINATE_AFTER_FIRST_CASE = """
import os
import signal


def pytest_runtest_logfinish(nodeid, location):
    os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` or a cancelled CI job sends it, once the first case is done
"""


def test_a_terminated_run_keeps_the_cases_it_measured(bench):
    _pair_suite(bench)
    bench.pytester.makeconftest(TERMINATE_AFTER_FIRST_CASE)
    result = bench.pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--specdec-suite", "suite", "--specdec-update-baselines",
        "--specdec-report-json", "r.json",
    )  # fmt: skip
    assert result.ret == 2  # interrupted
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*", "*1 passed*"])
    (first,) = bench.baseline()["cases"]  # the one case measured, recorded; the five never run, absent
    report = json.loads((bench.path / "r.json").read_text())
    assert [row["case"] for rows in report["suites"].values() for row in rows] == [first]
