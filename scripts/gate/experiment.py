"""The speedup gate's false-alarm and detection experiment (docs/suites.md, "How tight the gate is").

Runs a suite N times against its committed baselines as CI does (``--specdec-strict``, the CI machine class), once
with unchanged code and once with a 15% loss of speedup planted in the draft path by the test-only plugin
``scripts/gate/slow_draft.py`` (those runs stop at their first failing case, ``-x``: whether the run fails is what
counts), and writes every run's verdicts and speedups to a JSON file and a markdown table:

    python scripts/gate/experiment.py --runs 10 --out results/gate          # both experiments
    python scripts/gate/experiment.py --runs 10 --only planted --out ...     # one of them

A run "fails" when pytest exits non-zero; the table names each failing case and the metric it regressed on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ("unchanged", "planted")


def run_once(suite: str, machine_class: str, planted: bool, report: Path) -> dict[str, Any]:
    env = {**os.environ, "SPECDEC_MACHINE_CLASS": machine_class}
    command = [sys.executable, "-m", "pytest", "--specdec-suite", suite, "--specdec-strict", "-p", "no:randomly"]
    command += ["--specdec-report-json", str(report), "-q"]
    if planted:  # the run fails at its first failing case (-x): that is the verdict counted
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
        command += ["-p", "slow_draft", "-x"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    rows = json.loads(report.read_text())["suites"][suite] if report.is_file() else []
    failed = [
        {"case": r["case"], "verdict": r["verdict"], "speedup": r["speedup"]} for r in rows if r["outcome"] == "failed"
    ]
    return {
        "exit_code": done.returncode,
        "seconds": round(seconds, 1),
        "failed_cases": failed,
        "speedups": {r["case"]: r["speedup"] for r in rows if r["speedup"] is not None},
        "tail": done.stdout.strip().splitlines()[-1:] if done.stdout else [],
    }


def markdown(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for name, runs in results.items():
        failing = sum(1 for r in runs if r["exit_code"] != 0)
        lines.append(f"**{name}**: {failing} of {len(runs)} runs failed")
        lines.append("")
        lines.append("| run | exit | seconds | failing cases (verdict) |")
        lines.append("| --- | --- | --- | --- |")
        for i, r in enumerate(runs, 1):
            cases = "; ".join(f"{f['case']} ({f['verdict']})" for f in r["failed_cases"]) or "-"
            lines.append(f"| {i} | {r['exit_code']} | {r['seconds']} | {cases} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="cpu-smoke")
    parser.add_argument("--machine-class", default="cpu-x86_64-2c")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--only", choices=EXPERIMENTS, action="append")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gate")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    summary_path = args.out / "gate.json"
    for name in args.only or EXPERIMENTS:
        runs = results.setdefault(name, [])
        for i in range(args.runs):
            report = args.out / f"{name}-{i + 1:02d}.json"
            report.unlink(missing_ok=True)
            runs.append(run_once(args.suite, args.machine_class, name == "planted", report))
            r = runs[-1]
            print(
                f"{name} {i + 1}/{args.runs}: exit {r['exit_code']} in {r['seconds']} s; "
                f"failed: {[f['case'] for f in r['failed_cases']] or '-'}",
                flush=True,
            )
            summary_path.write_text(json.dumps(results, indent=1))  # nothing lost if interrupted
    (args.out / "gate.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
