"""What a wrong folder, a hostile baseline file, an untimed run or an interruption does (issue 9): each ends in one
clear line, and the summary and reports are still written."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pytest_specdec

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the skipping case needs a machine without CUDA")
MACHINE_CLASS = "test-machine"  # as tests/plugin/conftest.py pins it

PAIR = """
defaults: {{rounds: 1, warmup_rounds: 0, max_new_tokens: 4, prompts: ["def parse_args("]}}
cases:
  - name: pair
    target: {target}
    draft: {same}
    k: [1, 2]
"""
MISSING = """
cases:
  - name: gpu
    target: {target}
    device: cuda
    prompts: [hello]
"""
GPU_CASE = "gpu[ar,cuda,fp32,bs=1]"  # skipped on a machine without CUDA; a GPU machine skips these tests
GLOB_CASE = GPU_CASE.replace("[", "?").replace("]", "?")  # fnmatch reads brackets as a character class


def _record(**changes) -> dict:
    record = {
        "digest": "d",
        "greedy": True,
        "acceptance_rate": None,
        "tokens_per_forward": 1.0,
        "tokens_per_second": 100.0,
        "speedup": None,
        "output_hash": "abc",
        "new_tokens": 4,
        "peak_memory_bytes": 1000,
        "environment": {"machine_class": MACHINE_CLASS, "device_model": "cpu", "python": "3", "torch": "2"},
    }
    return {**record, **changes}


def _baseline_file(bench, cases: dict, machine_class: str = MACHINE_CLASS) -> None:
    folder = bench.path / "baselines" / "suite"
    folder.mkdir(parents=True, exist_ok=True)
    document = {"schema_version": 1, "suite": "suite", "machine_class": machine_class, "cases": cases}
    (folder / f"{MACHINE_CLASS}.json").write_text(json.dumps(document))


# ------------------------------------------------------------------------------------------ strict, nothing measured
def test_strict_fails_a_run_in_which_every_case_skipped(bench):
    bench.suite(MISSING)
    relaxed = bench.run("--specdec-suite", "suite")
    assert relaxed.ret == 0
    strict = bench.run("--specdec-suite", "suite", "--specdec-strict")
    strict.assert_outcomes(skipped=1)
    assert strict.ret == 1
    strict.stdout.fnmatch_lines(
        ["specdec: nothing was measured (--specdec-strict): all 1 selected case(s) skipped: cuda is not available*"]
    )


# ------------------------------------------------------------------------------------------- baselines folder
def test_an_update_into_a_file_instead_of_a_folder_is_refused_before_running(bench):
    bench.suite(MISSING)
    (bench.path / "blocker").write_text("not a folder\n")
    result = bench.run("--specdec-suite", "suite", "--specdec-update-baselines", "--specdec-baselines-dir", "blocker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --specdec-update-baselines cannot write *: *blocker is not a folder; *--specdec-baselines-dir*"]
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_update_into_a_read_only_folder_is_refused_before_running(bench):
    bench.suite(MISSING)
    folder = bench.path / "baselines"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = bench.run("--specdec-suite", "suite", "--specdec-update-baselines")
    finally:
        folder.chmod(0o755)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --specdec-update-baselines cannot write *: the folder * is not writable*"])


BLOCK_THE_SUITE_FOLDER = """
def pytest_collection_finish(session):
    (session.config.rootpath / "baselines").mkdir(exist_ok=True)
    (session.config.rootpath / "baselines" / "suite").write_text("a file where the suite's folder goes")
"""


def test_a_baseline_write_failing_at_the_end_still_writes_the_summary_and_reports(bench):
    bench.suite(PAIR)
    bench.pytester.makeconftest(BLOCK_THE_SUITE_FOLDER)  # after the check at start, as another process could
    result = bench.run("--specdec-suite", "suite", "--specdec-update-baselines", "--specdec-report-json", "r.json")
    result.assert_outcomes(passed=3)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*= specdec suite suite (test-machine) =*",
            "pair?k=2,cpu,fp32,bs=1? *",
            "specdec: summary written to *r.json",
            "specdec: could not write the baselines of suite suite to *test-machine.json: *; nothing was recorded*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    rows = json.loads((bench.path / "r.json").read_text())["suites"]["suite"]
    assert len(rows) == 3


# ------------------------------------------------------------------------------------------- failure reasons
def test_an_unexpected_exception_is_summarised_by_its_own_message(bench):
    bench.suite(PAIR)
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
    result = bench.run("--specdec-suite", "suite", "--specdec-report-json", "r.json")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["failed (1 case): ZeroDivisionError: division by zero"])
    assert "failed (1 case): request =" not in result.stdout.str()
    (row,) = [r for r in json.loads((bench.path / "r.json").read_text())["suites"]["suite"] if r["outcome"] == "failed"]
    assert row["reason"] == "ZeroDivisionError: division by zero"


def test_an_interrupted_case_is_labelled_interrupted(bench):
    bench.suite(PAIR)
    bench.pytester.makeconftest(
        """
import pytest
from specdec.engine import SpeculativeEngine


@pytest.fixture(autouse=True)
def _ctrl_c_in_k2(request, monkeypatch):
    if "k=2" in request.node.name:
        def interrupt(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(SpeculativeEngine, "generate", interrupt)
"""
    )
    result = bench.pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--specdec-suite", "suite", "--specdec-report-json", "r.json"
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.re_match_lines([r"pair\[k=2,cpu,fp32,bs=1\] .* interrupted$"])
    rows = {r["case"]: r for r in json.loads((bench.path / "r.json").read_text())["suites"]["suite"]}
    assert rows["pair[k=2,cpu,fp32,bs=1]"]["outcome"] == "interrupted"
    assert rows["pair[k=2,cpu,fp32,bs=1]"]["verdict"] == "interrupted"
    assert rows["pair[k=1,cpu,fp32,bs=1]"]["outcome"] == "passed"


# ------------------------------------------------------------------------------------------- untimed runs
def test_pytest_xdist_is_refused_with_one_line(bench):
    pytest.importorskip("xdist")
    bench.suite(MISSING)
    result = bench.run("--specdec-suite", "suite", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --specdec-suite cannot run under pytest-xdist (-n 2): *without -n/--dist"])
    assert not (bench.path / "baselines").exists()


def test_plain_tests_still_run_under_pytest_xdist_with_the_plugin_loaded(pytester, monkeypatch):
    pytest.importorskip("xdist")
    monkeypatch.setenv("PYTHONPATH", str(Path(pytest_specdec.__file__).parent.parent))  # this checkout's plugin
    pytester.makepyfile(
        test_units="""
import pytest

@pytest.mark.parametrize("n", range(4))
def test_unit(n):
    assert n >= 0

def test_benchmarked(benchmark):
    benchmark(sum, range(10))
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-n", "2")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*2 workers*"])


def test_benchmark_disable_cannot_update_baselines(bench):
    bench.suite(MISSING)
    result = bench.run("--specdec-suite", "suite", "--specdec-update-baselines", "--benchmark-disable")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --specdec-update-baselines with --benchmark-disable would record untimed*"])
    assert bench.run("--specdec-suite", "suite", "--benchmark-disable").ret == 0  # without updating: allowed


# ------------------------------------------------------------------------------------------- hand-edited baselines
@pytest.mark.parametrize(
    ("changes", "key", "shown"),
    [
        ({"tokens_per_second": "fast"}, "tokens_per_second", '"fast"'),
        ({"speedup": "fast"}, "speedup", '"fast"'),
        ({"acceptance_rate": math.nan}, "acceptance_rate", "NaN"),
        ({"tokens_per_forward": math.inf}, "tokens_per_forward", "Infinity"),
        ({"tokens_per_forward": True}, "tokens_per_forward", "true"),
    ],
)
def test_a_hand_edited_number_fails_collection_naming_file_case_and_key(bench, changes, key, shown):
    bench.suite(MISSING)
    _baseline_file(bench, {GPU_CASE: _record(**changes)})
    result = bench.run("--specdec-suite", "suite", "--collect-only")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error
    result.stdout.fnmatch_lines(
        [f"*baseline file *test-machine.json: case '{GLOB_CASE}': {key} must be a finite number*, got {shown}; *"]
    )


def test_a_baseline_file_of_another_machine_class_fails_collection(bench):
    bench.suite(MISSING)
    _baseline_file(bench, {GPU_CASE: _record()}, machine_class="nvidia-h100")
    result = bench.run("--specdec-suite", "suite", "--collect-only")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*test-machine.json: machine_class is 'nvidia-h100', but this run's machine class is 'test-machine'*"]
    )


def test_an_update_over_an_unreadable_file_keeps_a_copy_of_it(bench):
    bench.suite(PAIR)
    folder = bench.path / "baselines" / "suite"
    folder.mkdir(parents=True)
    (folder / f"{MACHINE_CLASS}.json").write_text('{"schema_version": 1, "cases": {"half a fi')
    result = bench.run("--specdec-suite", "suite", "--specdec-update-baselines")
    result.assert_outcomes(passed=3)
    (backup,) = folder.glob(f"{MACHINE_CLASS}.json.corrupt-*")
    assert backup.read_text() == '{"schema_version": 1, "cases": {"half a fi'
    result.stdout.fnmatch_lines([f"specdec: wrote * (3 recorded, 0 kept); the unreadable file * kept as {backup}"])
    assert len(bench.baseline()["cases"]) == 3


# ------------------------------------------------------------------------------------------- rootdir
def test_a_suite_path_outside_the_invocation_folder_warns_that_it_moved_the_rootdir(bench):
    elsewhere = bench.path.parent / f"{bench.path.name}-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.yaml").write_text(MISSING.format(target=bench.models["target"]))
    moved = bench.run("--specdec-suite", str(elsewhere / "x.yaml"), "--collect-only")
    assert moved.ret == 0
    moved.stdout.fnmatch_lines(["*PytestConfigWarning: --specdec-suite *: pytest took this path for a test path*"])
    kept = bench.run(f"--specdec-suite={elsewhere / 'x.yaml'}", "--collect-only")
    assert kept.ret == 0 and "PytestConfigWarning" not in kept.stdout.str()
    kept.stdout.fnmatch_lines([f"specdec baselines: {bench.path / 'baselines'}"])


# ------------------------------------------------------------------------------------------- lazy import
def test_importing_the_plugin_imports_neither_torch_nor_transformers():
    code = "import sys, pytest_specdec.plugin; print(sorted({'torch', 'transformers', 'specdec'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_a_run_without_a_suite_does_not_import_torch(pytester):
    pytester.makepyfile(
        """
import sys


def test_light(request):
    assert request.config.pluginmanager.has_plugin("specdec")
    assert "torch" not in sys.modules and "transformers" not in sys.modules
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
