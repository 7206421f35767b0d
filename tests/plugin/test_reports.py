"""What a run leaves behind: the summary table, JSON/CSV reports, pytest-benchmark's files and its compare."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

SUITE = """
defaults: {{rounds: 2, warmup_rounds: 1, max_new_tokens: 8, prompts: ["def parse_args(", [5, 6, 7]]}}
cases:
  - name: pair
    target: {target}
    draft: {same}
    k: [1, 3]
    adaptive_k: {{min_k: 1, max_k: 4}}
    batch_size: [1, 2]
  - name: random
    target: {target}
    draft: {unrelated}
    prompts: {{random_tokens: 12, count: 2, seed: 3}}
"""
EXTRA_INFO = {
    "acceptance_rate",
    "tokens_per_forward",
    "tokens_per_second",
    "speedup",
    "peak_memory_bytes",
    "output_hash",
    "device",
    "mean_accepted_length",
    "acceptance_by_position",
    "acceptance_by_position_unconditional",
    "ttft_s",
    "tpot_s",
    "itl_p50_s",
    "itl_p90_s",
    "itl_p99_s",
    "by_category",
}


def test_the_summary_table_and_its_json_and_csv(bench):
    bench.suite(SUITE)
    result = bench.run(
        "--specdec-suite", "suite", "--specdec-report-json", "out/r.json", "--specdec-report-csv", "r.csv"
    )
    result.assert_outcomes(passed=10)
    result.stdout.fnmatch_lines(
        [
            "*= specdec suite suite (test-machine) =*",
            "case * engine * draft * K * acceptance * tokens/fwd * tau * tokens/s * ttft ms * speedup * verdict",
        ]
    )
    result.stdout.re_match_lines(
        [
            r"pair\[ar,cpu,fp32,bs=1\] +specdec +- +ar +- +1 +1 +[\d.]+ +[\d.]+ +- +no baseline",
            r"pair\[k=auto,cpu,fp32,bs=2\] +specdec +model +auto \([\d.]+\) +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+"
            r" +[\d.]+x +no baseline",
            r"random\[k=4,cpu,fp32,bs=1\] +specdec +model +4 .*",
        ]
    )
    report = json.loads((bench.path / "out" / "r.json").read_text())
    assert report["machine_class"] == "test-machine" and "torch" in report["software"]
    rows = report["suites"]["suite"]
    assert [r["case"] for r in rows][:2] == ["pair[ar,cpu,fp32,bs=1]", "pair[k=1,cpu,fp32,bs=1]"]
    assert all(r["outcome"] == "passed" and r["tokens_per_second"] > 0 for r in rows)
    for r in rows:
        assert r["ttft_s"] > 0 and r["tpot_s"] > 0 and 0 < r["itl_p50_s"] <= r["itl_p90_s"] <= r["itl_p99_s"]
        assert r["by_category"] is None  # these prompts have no categories
        if r["k"] == "ar":
            assert r["mean_accepted_length"] == 1.0 and r["acceptance_by_position"] == []
        elif r["group"] == "pair":  # the draft is the target: every drafted position is accepted
            assert set(r["acceptance_by_position"]) == set(r["acceptance_by_position_unconditional"]) == {1.0}
    with open(bench.path / "r.csv", newline="") as handle:
        assert [r["case"] for r in csv.DictReader(handle)] == [r["case"] for r in rows]


def test_benchmark_json_carries_extra_info_and_compare_reads_autosaved_runs(bench):
    bench.suite(SUITE)
    storage = ("--benchmark-storage", str(bench.path / "runs"))
    for _ in range(2):
        bench.run("--specdec-suite", "suite", "-k", "pair and bs1", "--benchmark-autosave", *storage).assert_outcomes(
            passed=4
        )
    result = bench.run("--specdec-suite", "suite", "-k", "pair and bs1", "--benchmark-json", "bench.json")
    benchmarks = json.loads((bench.path / "bench.json").read_text())["benchmarks"]
    assert [b["name"] for b in benchmarks] == [
        "pair[ar,cpu,fp32,bs=1]",
        "pair[k=1,cpu,fp32,bs=1]",
        "pair[k=3,cpu,fp32,bs=1]",
        "pair[k=auto,cpu,fp32,bs=1]",
    ]
    for entry in benchmarks:
        assert set(entry["extra_info"]) >= EXTRA_INFO and entry["stats"]["rounds"] == 2
        assert entry["group"] == "suite: pair[ar,cpu,fp32,bs=1]"
    assert benchmarks[1]["extra_info"]["speedup"] > 0 and benchmarks[0]["extra_info"]["speedup"] is None
    assert benchmarks[1]["extra_info"]["device"] == "cpu"

    saved = sorted((bench.path / "runs").rglob("*.json"))
    assert len(saved) == 2
    compare = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_benchmark",
            "--storage",
            str(bench.path / "runs"),
            "compare",
            "--group-by",
            "name",
        ],
        capture_output=True,
        text=True,
        cwd=bench.path,
        timeout=120,
    )
    assert compare.returncode == 0, compare.stderr
    assert "pair[k=3,cpu,fp32,bs=1] (0002" in compare.stdout and "pair[k=3,cpu,fp32,bs=1] (0001" in compare.stdout
    del result


def test_a_deselected_reference_is_measured_for_the_speedup(bench):
    bench.suite(SUITE)
    result = bench.run("--specdec-suite", "suite", "-k", "pair and k3 and bs2", "--specdec-report-json", "r.json")
    result.assert_outcomes(passed=1)
    (row,) = json.loads((bench.path / "r.json").read_text())["suites"]["suite"]
    assert row["case"] == "pair[k=3,cpu,fp32,bs=2]" and row["speedup"] > 0
    assert row["speedup_over"] == "pair[ar,cpu,fp32,bs=2]"
