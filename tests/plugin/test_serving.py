"""Serving suites (``engine: openai``): the plugin starts ``specdec serve`` itself or sends to a running endpoint,
streams every request and reports TTFT, ITL and throughput; a dead endpoint and a malformed entry fail clearly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pytest_specdec.endpoints import free_port
from pytest_specdec.errors import SuiteError
from pytest_specdec.suite import parse_suite

pytest.importorskip("uvicorn", reason="the serve extra is not installed")

LOAD = """
defaults:
  engine: openai
  max_new_tokens: 4
  prompts: ["def parse_args(", "for index, value in"]
  rounds: 1
  warmup_rounds: 0
  tolerances: {{speedup: 0.9, tokens_per_second: 0.99}}
cases:
"""


def _rows(path: Path) -> dict[str, dict]:
    report = json.loads(path.read_text())
    return {row["case"]: row for row in report["suites"]["suite"]}


def test_a_serve_suite_starts_its_servers_and_reports_latency_and_throughput(bench):
    bench.suite(
        LOAD + "  - name: served\n    serve: {{target: {target}, draft: {same}, k: 2}}\n    concurrency: [1, 2]\n"
    )
    result = bench.run("--specdec-suite", "suite", "--specdec-report-json", "report.json")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*serving: throughput and latency (ms)*", "*served*engine=openai,k=2,cpu,fp32,c=2*"])
    rows = _rows(bench.path / "report.json")
    assert set(rows) == {
        "served[engine=openai,ar,cpu,fp32,c=1]",
        "served[engine=openai,k=2,cpu,fp32,c=1]",
        "served[engine=openai,ar,cpu,fp32,c=2]",
        "served[engine=openai,k=2,cpu,fp32,c=2]",
    }
    speculative = rows["served[engine=openai,k=2,cpu,fp32,c=2]"]
    assert speculative["speedup_over"] == "served[engine=openai,ar,cpu,fp32,c=2]"
    assert speculative["speedup"] > 0
    assert speculative["acceptance_rate"] == 1.0  # the draft is the target: greedy acceptance is total
    assert speculative["tokens_per_forward"] > 1.5
    assert speculative["requests"] == 2 and speculative["concurrency"] == 2
    for row in rows.values():
        assert row["output_throughput"] > 0 and row["request_throughput"] > 0
        assert row["ttft_p50_s"] > 0 and row["ttft_p99_s"] >= row["ttft_p50_s"]
        assert row["itl_p50_s"] > 0 and row["tpot_s"] > 0
    autoregressive = rows["served[engine=openai,ar,cpu,fp32,c=1]"]
    assert autoregressive["acceptance_rate"] is None and autoregressive["tokens_per_forward"] == 1.0


@pytest.fixture
def running_server(tiny_models) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "specdec", "serve", "--target", str(tiny_models["target"])]
    command += ["--port", str(port), "--device", "cpu", "--dtype", "float32"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[1].decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def test_an_endpoint_suite_sends_to_a_running_server(bench, running_server):
    bench.suite(LOAD + f"  - name: remote\n    endpoint: {running_server}\n    concurrency: 2\n    requests: 3\n")
    result = bench.run("--specdec-suite", "suite", "--specdec-report-json", "report.json")
    result.assert_outcomes(passed=1)
    row = _rows(bench.path / "report.json")["remote[engine=openai,c=2]"]
    assert row["endpoint"] == running_server and row["requests"] == 3
    assert row["output_throughput"] > 0 and row["ttft_p50_s"] > 0
    assert row["speedup"] is None  # nothing to pair it with
    assert row["tokens_per_forward"] == 1.0  # our server's /metrics was read: an autoregressive server


def test_an_endpoint_where_nothing_listens_fails_the_case_naming_it(bench):
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    bench.suite(LOAD + f"  - name: nobody\n    endpoint: {endpoint}\n")
    result = bench.run("--specdec-suite", "suite")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*endpoint {endpoint} does not answer GET {endpoint}/models*"])


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("  - name: x\n", "cases[0]: engine openai needs exactly one of `endpoint`"),
        (
            "  - name: x\n    endpoint: http://127.0.0.1:9/v1\n    serve: {target: zoo:tiny-code-target}\n",
            "cases[0].serve: engine openai needs exactly one of `endpoint`",
        ),
        (
            "  - name: x\n    serve: {target: zoo:tiny-code-target, drfat: x}\n",
            "cases[0].serve.drfat: unknown serve key",
        ),
        ("  - name: x\n    endpoint: localhost:8000\n", "cases[0].endpoint: expected the base URL"),
        (
            "  - name: x\n    endpoint: http://127.0.0.1:9/v1\n    target: zoo:tiny-code-target\n",
            "cases[0].target: target does not apply to engine openai",
        ),
    ],
)
def test_a_malformed_serving_entry_names_the_key(tmp_path, entry, expected):
    path = tmp_path / "serving.yaml"
    text = 'defaults:\n  engine: openai\n  prompts: ["def f("]\ncases:\n' + entry
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SuiteError) as error:
        parse_suite(path)
    assert expected in str(error.value)


def test_serving_keys_without_engine_openai_are_refused(tmp_path):
    path = tmp_path / "serving.yaml"
    path.write_text("cases:\n  - name: x\n    target: zoo:tiny-code-target\n    prompts: [a]\n    concurrency: 4\n")
    with pytest.raises(SuiteError, match=r"cases\[0\]\.concurrency: concurrency applies to serving cases only"):
        parse_suite(path)
