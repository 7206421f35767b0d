"""pytest-benchmark, natively: the machine and software in its saved runs' ``machine_info``, a run gated against a
saved run (``--specdec-compare``), earlier runs as the HTML report's history (``--specdec-history``), and the
markdown and HTML reports of a real run."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytest_benchmark.logger import PytestBenchmarkWarning

import pytest_specdec
from pytest_specdec.machine import benchmark_machine_info, parse_nvidia_driver
from pytest_specdec.saved_runs import SavedRun

MACHINE_CLASS = "test-machine"  # as tests/plugin/conftest.py pins it
SUITE = """
defaults: {{rounds: 2, warmup_rounds: 0, max_new_tokens: 6, prompts: ["def parse_args("]}}
cases:
  - name: pair
    target: {target}
    draft: {same}
    k: [1, 3]
"""
AR, K1, K3 = "pair[ar,cpu,fp32,bs=1]", "pair[k=1,cpu,fp32,bs=1]", "pair[k=3,cpu,fp32,bs=1]"
PLAIN_BENCHMARK = """
def test_sum(benchmark):
    benchmark(sum, range(10))
"""


def saved_runs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/[0-9][0-9][0-9][0-9]_*.json"))


def edit_saved_run(path: Path, cases: dict[str, dict], machine: dict | None = None) -> None:
    """Change extra_info values of some cases (and the plugin's machine_info) in a saved run."""
    data = json.loads(path.read_text())
    for benchmark in data["benchmarks"]:
        benchmark["extra_info"].update(cases.get(benchmark["extra_info"]["case"], {}))
    data["machine_info"]["specdec"].update(machine or {})
    path.write_text(json.dumps(data))


def test_saved_runs_carry_the_machine_software_and_each_case_s_digest(bench):
    bench.suite(SUITE)
    bench.run(
        "--specdec-suite", "suite", "-k", "k1", "--benchmark-autosave", "--benchmark-storage=runs"
    ).assert_outcomes(passed=1)
    (path,) = saved_runs(bench.path / "runs")
    data = json.loads(path.read_text())
    info = data["machine_info"]["specdec"]
    assert info["machine_class"] == MACHINE_CLASS
    assert info["torch"] and info["transformers"] and info["cpu"] and info["cpu_capability"] and info["cores"] >= 1
    assert ("gpus" in info) is torch.cuda.is_available()  # with CUDA and the driver: tested below on a GPU
    (case,) = data["benchmarks"]
    assert len(case["extra_info"]["digest"]) == 16

    # pytest-benchmark's own --benchmark-compare shows both machine_infos where they differ
    edit_saved_run(path, {}, {"torch": "0.0-edited"})
    with pytest.warns(PytestBenchmarkWarning, match="Benchmark machine_info is different") as warned:
        result = bench.run(
            "--specdec-suite", "suite", "-k", "k1", "--benchmark-storage=runs", "--benchmark-compare=0001"
        )
    result.assert_outcomes(passed=1)
    message = str(warned[0].message)
    assert '"torch": "0.0-edited"' in message and f'"torch": "{info["torch"]}"' in message


def test_a_run_gated_against_a_saved_run_fails_a_regressed_case_naming_the_metric(bench):
    bench.suite(SUITE)
    bench.run("--specdec-suite", "suite", "--benchmark-autosave", "--benchmark-storage=runs").assert_outcomes(passed=3)
    (path,) = saved_runs(bench.path / "runs")
    saved = {b["extra_info"]["case"]: b["extra_info"] for b in json.loads(path.read_text())["benchmarks"]}
    slow = {"tokens_per_second": 0.01, "speedup": 0.01}  # any run now is faster: improved, never a timing flake
    edit_saved_run(
        path,
        {
            AR: {"tokens_per_second": 0.01},
            K1: slow,
            K3: {**slow, "tokens_per_forward": saved[K3]["tokens_per_forward"] * 2},  # now half of it: regressed
        },
    )
    result = bench.run(
        "--specdec-suite",
        "suite",
        "--benchmark-storage=runs",
        "--specdec-compare=1",
        "--specdec-history=runs/*/*.json",
        "--specdec-report-md=out/r.md",
        "--specdec-report-html=out/r.html",
        "--specdec-report-json=out/r.json",
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            f"specdec gate: the saved run {path} (*), not the baselines",
            "specdec history: 1 earlier run(s) from runs/*/*.json",
            f"*regressed against {path.relative_to(bench.path)}: tokens_per_forward",
            "*tokens_per_forward: baseline *, now *, tolerance -3% (fails below *)",
        ]
    )
    rows = {r["case"]: r for r in json.loads((bench.path / "out" / "r.json").read_text())["suites"]["suite"]}
    assert rows[K1]["status"] == "improved" and rows[K3]["status"] == "REGRESSION"
    assert rows[K3]["regressions"].startswith("tokens_per_forward: baseline ")

    markdown = (bench.path / "out" / "r.md").read_text()
    assert markdown.startswith(
        f"## specdec benchmarks failed: suite on {MACHINE_CLASS}\n\n**1 REGRESSION**, 2 improved"
    )
    assert f"- `suite` `{K3}`: tokens_per_forward: baseline " in markdown
    page = (bench.path / "out" / "r.html").read_text()
    assert f"gated against the saved run {path}" in page and "<th>0001</th><th>this run</th>" in page
    if importlib.util.find_spec("matplotlib") is not None:
        assert page.count('<img alt="suite / pair: speedup') == 2  # against K, and across runs


def test_compare_refuses_a_missing_run_a_run_without_specdec_cases_and_an_update(bench):
    bench.suite(SUITE)
    storage = "--benchmark-storage=runs"
    nothing = bench.run("--specdec-suite", "suite", storage, "--specdec-compare=7")
    assert nothing.ret == pytest.ExitCode.USAGE_ERROR
    nothing.stderr.fnmatch_lines(
        ["ERROR: --specdec-compare 7: no saved run numbered 0007 in *runs*; saved runs: none*"]
    )

    bench.pytester.makepyfile(test_plain=PLAIN_BENCHMARK)
    bench.run("test_plain.py", "--benchmark-autosave", storage).assert_outcomes(passed=1)
    (plain,) = saved_runs(bench.path / "runs")
    missing = bench.run("--specdec-suite", "suite", storage, "--specdec-compare=2")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines([f"*no saved run numbered 0002 in *; saved runs: {plain.parent.name}/{plain.name};*"])

    foreign = bench.run("--specdec-suite", "suite", storage, "--specdec-compare=0001")
    assert foreign.ret == pytest.ExitCode.USAGE_ERROR
    foreign.stderr.fnmatch_lines([f"ERROR: {plain} holds no specdec case: none of its benchmarks carries*"])

    no_file = bench.run("--specdec-suite", "suite", "--specdec-compare=old/run.json")
    no_file.stderr.fnmatch_lines(["ERROR: --specdec-compare old/run.json: no such file *old/run.json*"])

    update = bench.run("--specdec-suite", "suite", "--specdec-compare=1", "--specdec-update-baselines")
    assert update.ret == pytest.ExitCode.USAGE_ERROR
    update.stderr.fnmatch_lines(["ERROR: --specdec-compare with --specdec-update-baselines: *"])


def test_a_saved_run_with_a_damaged_metric_is_refused_naming_the_case(bench):
    bench.suite(SUITE)
    bench.run(
        "--specdec-suite", "suite", "-k", "k1", "--benchmark-autosave", "--benchmark-storage=runs"
    ).assert_outcomes(passed=1)
    (path,) = saved_runs(bench.path / "runs")
    edit_saved_run(path, {K1: {"tokens_per_forward": "fast"}})
    result = bench.run("--specdec-suite", "suite", "--benchmark-storage=runs", f"--specdec-compare={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    expected = f"ERROR: {path}: case '{K1}': extra_info.tokens_per_forward must be a finite number, got \"fast\";"
    assert expected in result.stderr.str()


def test_a_changed_entry_is_stale_against_a_saved_run_and_one_saved_without_digests_is_taken_as_unchanged(bench):
    bench.suite(SUITE)
    storage = "--benchmark-storage=runs"
    bench.run("--specdec-suite", "suite", "-k", "k1", "--benchmark-autosave", storage).assert_outcomes(passed=1)
    (path,) = saved_runs(bench.path / "runs")
    edit_saved_run(path, {K1: {"digest": "0" * 16}})
    stale = bench.run("--specdec-suite", "suite", "-k", "k1", storage, "--specdec-compare=1", "--specdec-strict")
    stale.assert_outcomes(failed=1)
    stale.stdout.fnmatch_lines(
        ["*stale baseline for pair?k=1,cpu,fp32,bs=1? in runs/*/0001_*.json (--specdec-strict)*"]
    )
    edit_saved_run(path, {K1: {"digest": None, "tokens_per_second": 0.01, "speedup": 0.01}})  # no timing flake
    unchanged = bench.run("--specdec-suite", "suite", "-k", "k1", storage, "--specdec-compare=1", "--specdec-strict")
    unchanged.assert_outcomes(passed=1)
    assert "stale baseline" not in unchanged.stdout.str()


def test_history_needs_the_html_report_and_reads_only_runs_it_understands(bench):
    bench.suite(SUITE)
    alone = bench.run("--specdec-suite", "suite", "--specdec-history=runs/*.json")
    assert alone.ret == pytest.ExitCode.USAGE_ERROR
    alone.stderr.fnmatch_lines(["ERROR: --specdec-history feeds the HTML report's history plots: add *"])
    (bench.path / "runs").mkdir()
    (bench.path / "runs" / "notes.json").write_text('{"hello": 1}')
    odd = bench.run("--specdec-suite", "suite", "--specdec-history=runs/*.json", "--specdec-report-html=r.html")
    assert odd.ret == pytest.ExitCode.USAGE_ERROR
    odd.stderr.fnmatch_lines(["ERROR: *notes.json is neither a pytest-benchmark run * nor a --specdec-report-json*"])


@pytest.mark.parametrize("imports_torch", [False, True])
def test_without_a_suite_machine_info_gets_the_plugin_s_part_only_when_the_run_imported_torch(
    pytester, monkeypatch, imports_torch
):
    monkeypatch.setenv("PYTHONPATH", str(Path(pytest_specdec.__file__).parent.parent))  # this checkout's plugin
    pytester.makepyfile(test_plain=("import torch\n" if imports_torch else "") + PLAIN_BENCHMARK)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--benchmark-json=out.json")
    result.assert_outcomes(passed=1)
    machine_info = json.loads((pytester.path / "out.json").read_text())["machine_info"]
    assert ("specdec" in machine_info) is imports_torch
    if imports_torch:
        assert machine_info["specdec"]["torch"] and machine_info["specdec"]["machine_class"]


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:51 UTC 2024\n", "550.54.15"),
        ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs@U16)\n", "570.86.15"),
        ("NVRM version: NVIDIA UNIX aarch64 Kernel Module  535.129  Thu Nov  2 12:00:00 UTC 2023\n", "535.129"),
        ("GCC version: 12\n", None),
    ],
)  # fmt: skip
def test_the_nvidia_driver_version_is_read_from_the_kernel_module_line(text, version):
    assert parse_nvidia_driver(text) == version


def test_a_report_path_outside_the_invocation_folder_warns_that_it_moved_the_rootdir(bench):
    bench.suite(SUITE)
    elsewhere = bench.path.parent / f"{bench.path.name}-reports"
    elsewhere.mkdir()
    (elsewhere / "r.html").write_text("from an earlier run")
    moved = bench.run("--specdec-suite", "suite", "--specdec-report-html", str(elsewhere / "r.html"), "--collect-only")
    assert moved.ret == 0
    moved.stdout.fnmatch_lines(["*PytestConfigWarning: --specdec-report-html *: pytest took this path for a test*"])


@pytest.mark.parametrize(
    ("info", "shown"),
    [
        (
            {"gpus": ["NVIDIA H200", "NVIDIA H200"], "gpu_driver": "570.86.15", "cuda": "12.8"},
            "NVIDIA H200 (driver 570.86.15, CUDA 12.8)",
        ),
        ({"cpu": "AMD EPYC", "cpu_capability": "AVX512"}, "AMD EPYC (AVX512)"),
    ],
)
def test_the_gate_line_says_when_and_on_what_the_saved_run_ran(info, shown):
    run = SavedRun(
        path=Path("runs/0001_x.json"),
        label="0001",
        created_at="2026-12-01T10:00:00",
        commit="0123456789abcdef",
        machine_info={"specdec": {"torch": "2.13.0", "transformers": "5.24.0", **info}},
        cases={},
        from_benchmark=True,
    )
    assert run.describe() == f"2026-12-01T10:00:00, commit 0123456789ab, torch 2.13.0, transformers 5.24.0, {shown}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_machine_info_names_the_gpus_cuda_and_the_driver():
    info = benchmark_machine_info()
    assert info["gpus"] and all(isinstance(name, str) and name for name in info["gpus"])
    assert info["cuda"] == torch.version.cuda
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", info["gpu_driver"] or ""), info.get("gpu_driver")


COMPARE_CONFTEST = """
def pytest_benchmark_group_stats(config, benchmarks, group_by):
    from pytest_specdec.plugin import pytest_benchmark_group_stats as group_stats

    return group_stats(config=config, benchmarks=benchmarks, group_by=group_by)
"""


def test_pytest_benchmark_compare_names_each_saved_run_s_machine_and_software(bench):
    bench.suite(SUITE)
    for _ in range(2):
        bench.run(
            "--specdec-suite", "suite", "-k", "k1", "--benchmark-autosave", "--benchmark-storage=runs"
        ).assert_outcomes(passed=1)
    first, second = saved_runs(bench.path / "runs")
    gpu = {"gpus": ["NVIDIA H200"], "cuda": "13.0", "gpu_driver": "580.159.04", "torch": "2.11.0+cu130"}
    edit_saved_run(second, {}, {**gpu, "transformers": "5.17.0"})
    info = json.loads(first.read_text())["machine_info"]["specdec"]
    folder = bench.path / "compare"
    folder.mkdir()
    (folder / "conftest.py").write_text(COMPARE_CONFTEST)  # the command reads hooks from ./conftest.py only
    done = subprocess.run(
        [sys.executable, "-c", "from pytest_benchmark.cli import main; main()", "compare", str(first), str(second)],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    shown = done.stdout + done.stderr  # the table goes to stderr
    cpu = f"{info['cpu']} ({info['cpu_capability']}, {info['cores']} cores), torch {info['torch']}"
    assert f"0001: {cpu}, transformers {info['transformers']}" in shown
    assert "0002: NVIDIA H200 (CUDA 13.0, driver 580.159.04), torch 2.11.0+cu130, transformers 5.17.0" in shown


def test_a_run_saved_without_the_plugin_s_machine_info_keeps_its_group_name():
    from pytest_specdec.saved_runs import label_groups, machine_label

    assert machine_label({}) == ""
    groups = [("suite: x", [{"name": "x", "path": "/nonexistent/0001_abc.json"}]), ("live", [{"name": "y"}])]
    assert label_groups(groups) == groups
