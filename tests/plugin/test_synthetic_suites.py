"""Synthetic acceptance in suites: the policy mapping and its sweeps, ids, collection errors with file, line and key,
the digest, the shipped suites, and a gate that never compares a synthetic case's output hash."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from records import record
from suite_text import suite_cases, suite_error

from pytest_specdec.cases import expand
from pytest_specdec.gating import Outcome, Tolerances, compare
from pytest_specdec.measurement import CaseRecord
from pytest_specdec.suite import parse_suite

ROOT = Path(__file__).resolve().parents[2]
HEAD = """\
defaults:
  prompts: [hello]
cases:
  - name: x
    target: zoo:tiny-code-target
    draft: zoo:tiny-code-draft
"""  # a case's further keys start on line 7


def test_synthetic_policies_sweep_and_read_in_ids(tmp_path):
    text = HEAD + (
        "    k: [2, 4]\n"
        "    policy:\n"
        "      - {name: synthetic, acceptance_rate: [0.5, 0.8]}\n"
        "      - {name: synthetic, acceptance_rates: [0.9, 0.8, 0.6, 0.5]}\n"
        "      - {name: synthetic, acceptance_length: 2.5}\n"
        "      - lossless\n"
    )
    found = suite_cases(tmp_path, text)
    ids = [c.id for c in found]
    assert ids == [
        "x[ar,cpu,fp32,bs=1]",
        *(
            f"x[k={k},cpu,fp32,bs=1{label}]"
            for label in (",syn=0.5", ",syn=0.8", ",syn-rates=0.9_0.8_0.6_0.5", ",syn-len=2.5", "")
            for k in (2, 4)
        ),
    ]
    by_id = {c.id: c for c in found}
    case = by_id["x[k=4,cpu,fp32,bs=1,syn=0.8]"]
    assert case.policy_name == "synthetic" and case.synthetic == {"acceptance_rate": 0.8}
    assert by_id["x[k=4,cpu,fp32,bs=1,syn-rates=0.9_0.8_0.6_0.5]"].synthetic == {
        "acceptance_rates": [0.9, 0.8, 0.6, 0.5]
    }
    assert by_id["x[k=4,cpu,fp32,bs=1]"].synthetic is None
    digests = {c.digest() for c in found}
    assert len(digests) == len(found)  # every parameter is part of the definition


def test_a_list_of_rate_lists_sweeps_them(tmp_path):
    text = HEAD + "    k: 2\n    policy: {name: synthetic, acceptance_rates: [[0.9, 0.8], [0.7, 0.5]]}\n"
    assert [c.id for c in suite_cases(tmp_path, text)][1:] == [
        "x[k=2,cpu,fp32,bs=1,syn-rates=0.9_0.8]",
        "x[k=2,cpu,fp32,bs=1,syn-rates=0.7_0.5]",
    ]


def test_the_digest_keeps_exact_values_and_other_cases_keep_theirs(tmp_path):
    base = suite_cases(tmp_path, HEAD + "    k: 2\n")
    again = suite_cases(tmp_path, HEAD + "    k: 2\n    policy: [lossless, {name: synthetic, acceptance_rate: 0.8}]\n")
    assert [c.digest() for c in base] == [c.digest() for c in again[:2]]  # lossless cases: digests unchanged
    close = suite_cases(tmp_path, HEAD + "    k: 2\n    policy: {name: synthetic, acceptance_rate: 0.80000001}\n")
    assert close[1].id == again[2].id and close[1].digest() != again[2].digest()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("{name: synthetic}", ":7: cases[0].policy: policy synthetic needs exactly one of acceptance_rate, *none"),
        (
            "{name: synthetic, acceptance_rate: 0.5, acceptance_length: 2}",
            ":7: cases[0].policy: policy synthetic needs exactly one of*acceptance_rate, acceptance_length",
        ),
        ("{name: synthetic, acceptance_rate: 1.5}", ":7: cases[0].policy.acceptance_rate: *must be in (0, 1], got 1.5"),
        ("{name: synthetic, acceptance_rate: [0.5, 0]}", ":7: cases[0].policy.acceptance_rate[1]: *(0, 1], got 0"),
        ("{name: synthetic, acceptance_rate: fast}", ":7: cases[0].policy.acceptance_rate: expected a number*"),
        ("{name: synthetic, acceptance_rates: []}", ":7: cases[0].policy.acceptance_rates: *empty*"),
        ("{name: synthetic, acceptance_rates: [0.5, 0.9]}", ":7: cases[0].policy.acceptance_rates: *not increase*"),
        ("{name: synthetic, acceptance_rates: [0.9]}", ":7: cases[0].policy: acceptance_rates has 1 entries but K*4*"),
        ("{name: synthetic, acceptance_length: 6}", ":7: cases[0].policy: acceptance_length must be in [1, K + 1]*"),
        ("{name: synthetic, threshold: 0.5}", ":7: cases[0].policy.threshold: threshold does not apply to*"),
        (
            "[{name: synthetic, acceptance_rate: 0.8}, {name: synthetic, acceptance_rate: [0.8]}]",
            ":7: cases[0].policy[1]: syn=0.8 is listed twice (also as cases[0].policy[0])*",
        ),
    ],
    ids=[
        "no-parameter",
        "two-parameters",
        "rate-above-1",
        "swept-rate-0",
        "rate-not-a-number",
        "empty-rates",
        "rising-rates",
        "rates-shorter-than-k",
        "length-above-k-plus-1",
        "lossy-key",
        "listed-twice",
    ],
)
def test_bad_synthetic_policies_fail_collection_naming_file_line_and_key(tmp_path, policy, expected):
    message = suite_error(tmp_path, HEAD + f"    policy: {policy}\n")
    assert matches(message, expected), message


def matches(text: str, pattern: str) -> bool:
    """``pattern``'s parts between ``*`` occur in ``text`` in order, the first at its start (brackets are literal)."""
    parts = pattern.split("*")
    if not text.startswith(parts[0]):
        return False
    at = len(parts[0])
    for part in parts[1:]:
        found = text.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return True


@pytest.mark.parametrize(
    ("suite", "count", "example"),
    [
        ("synthetic-acceptance", 9, "tiny-code[k=4,cpu,fp32,bs=1,syn=0.8]"),
        ("synthetic-acceptance-gpu", 75, "llama-3b[k=8,cuda,bf16,bs=1,syn=0.95]"),
    ],
)
def test_the_shipped_synthetic_suites_collect(suite, count, example):
    found = expand(parse_suite(ROOT / "bench_suites" / f"{suite}.yaml"))
    assert len(found) == count and example in {c.id for c in found}
    assert all(c.synthetic is not None for c in found if not c.is_autoregressive)


def test_a_synthetic_cases_output_hash_is_reported_never_gated():
    baseline = record(acceptance_rate=0.8, tokens_per_forward=3.0, speedup=2.0, synthetic=True)
    verdict = compare(dataclasses.replace(baseline, output_hash="other"), baseline, Tolerances())
    hash_check = next(c for c in verdict.checks if c.metric == "output_hash")
    assert hash_check.outcome is Outcome.CHANGED and "synthetic acceptance: not gated" in hash_check.note
    assert not verdict.failed
    lossless = dataclasses.replace(baseline, synthetic=False)
    assert compare(dataclasses.replace(lossless, output_hash="other"), lossless, Tolerances()).failed
    assert CaseRecord.from_dict({**baseline.to_dict(), "environment": {}}).synthetic is True
    assert CaseRecord.from_dict({"digest": "d", "greedy": True}).synthetic is False  # older baselines
