"""``python -m specdec.benchmarks.batching`` on the CPU with the zoo pair: throughput, the rows' latencies and the
check that speculation gave every row the autoregressive run's tokens, in its table and its JSON report."""

from __future__ import annotations

import json

from specdec.benchmarks import batching


def test_the_report_has_each_batch_size_with_its_rows_latencies(tmp_path, capsys):
    args = ["--target", "zoo:tiny-code-target", "--draft", "zoo:tiny-code-draft", "--device", "cpu", "--dtype",
            "float32", "--batches", "1,3", "--max-new-tokens", "12", "--prompt-length", "8", "--repeats", "1",
            "--out", str(tmp_path)]  # fmt: skip
    assert batching.main(args) == 0
    report = json.loads((tmp_path / "batching_report.json").read_text())
    assert [row["batch"] for row in report["rows"]] == [1, 3]
    for row in report["rows"]:
        assert row["same_output"] is True  # greedy, per-row acceptance: each row's own autoregressive tokens
        for side in ("ar", "sd"):  # one latency per row
            latencies = row[f"{side}_row_latency_s"]
            assert len(latencies) == row["batch"] and all(t > 0 for t in latencies)
    assert "row latency" in capsys.readouterr().out


def test_a_synthetic_acceptance_makes_no_claim_about_the_output(tmp_path, capsys):
    """A synthetic acceptance keeps drafts by a coin, so the speculative tokens are not the target's: the report says
    that instead of comparing them."""
    args = ["--target", "zoo:tiny-code-target", "--draft", "zoo:tiny-code-draft", "--device", "cpu", "--dtype",
            "float32", "--batches", "1", "--max-new-tokens", "12", "--prompt-length", "8", "--repeats", "1",
            "--acceptance-rate", "0.8", "--out", str(tmp_path)]  # fmt: skip
    assert batching.main(args) == 0
    report = json.loads((tmp_path / "batching_report.json").read_text())
    assert report["rows"][0]["same_output"] is None
    assert "n/a (synthetic acceptance)" in capsys.readouterr().out
