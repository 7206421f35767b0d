"""Suites collect into the expected ids and markers; malformed suites fail collection with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_specdec.cases import expand
from pytest_specdec.suite import parse_suite

ROOT = Path(__file__).resolve().parents[2]

SWEEP = """
description: ids and markers
defaults:
  max_new_tokens: 8
  rounds: 1
  warmup_rounds: 0
  prompts: ["def parse_args("]
cases:
  - name: tiny
    target: {target}
    draft: {same}
    k: [1, 4]
    adaptive_k: {{min_k: 1, max_k: 4}}
    temperature: [0, 0.8]
    device: [cpu, cuda]
    markers: [slow]
  - name: lossy
    target: {target}
    draft: {same}
    k: 2
    policy: [{{name: lossy-threshold, threshold: 0.5}}, lossy-topk]
    batch_size: [1, 2]
    max_new_tokens: [8, 16]
  - name: alone
    target: {target}
    dtype: bf16
"""


def test_a_suite_collects_into_stable_readable_ids(bench):
    bench.suite(SWEEP)
    result = bench.run("--specdec-suite", "suite", "--collect-only", "-q")
    ids = [line.split("::", 1)[1] for line in result.outlines if line.startswith("bench_suites/suite.yaml::")]
    expected_tiny = [
        f"tiny[{k},{device},fp32,bs=1{t}]"
        for device in ("cpu", "cuda")
        for t in ("", ",t=0.8")
        for k in ("ar", "k=1", "k=4", "k=auto")
    ]
    expected_lossy = [
        f"lossy[{k},cpu,fp32,bs={bs}{policy},n={n}]"
        for bs in (1, 2)
        for n in (8, 16)
        for k, policy in (("ar", ""), ("k=2", ",lossy-threshold-0.5"), ("k=2", ",lossy-topk"))
    ]
    assert ids == [*expected_tiny, *expected_lossy, "alone[ar,cpu,bf16,bs=1]"]


def test_cases_carry_device_and_suite_markers(bench):
    bench.suite(SWEEP)
    items, _ = bench.pytester.inline_genitems("--specdec-suite", "suite", "-p", "no:randomly")
    by_id = {item.name: item for item in items}
    cuda_case = by_id["tiny[k=4,cuda,fp32,bs=1]"]
    cpu_case = by_id["tiny[k=4,cpu,fp32,bs=1]"]
    assert cuda_case.get_closest_marker("gpu") and cuda_case.get_closest_marker("slow")
    assert cuda_case.get_closest_marker("skip").kwargs["reason"].startswith("cuda is not available")
    assert not cpu_case.get_closest_marker("gpu") and cpu_case.get_closest_marker("slow")
    assert not by_id["alone[ar,cpu,bf16,bs=1]"].get_closest_marker("slow")
    assert by_id["lossy[k=2,cpu,fp32,bs=2,lossy-topk,n=16]"].get_closest_marker("specdec").kwargs == {
        "suite": "suite",
        "entry": "lossy",
        "engine": "specdec",
        "k": 2,
        "draft": "model",
        "bs": 2,
        "device": "cpu",
        "dtype": "fp32",
        "policy": "lossy-topk",
        "sampled": False,
        "n": 16,
    }
    # No `benchmark` marker (its name holds "ar", so `-k ar` would select every case): the group is set at run time.
    assert not any(item.get_closest_marker("benchmark") for item in items)


@pytest.mark.parametrize(
    ("option", "count"),
    [(("-m", "not gpu"), 21), (("-m", "not slow"), 13), (("-k", "k4 and not sampled"), 2), (("-k", "kauto"), 4)],
)
def test_markers_and_keywords_select_cases(bench, option, count):
    bench.suite(SWEEP)
    result = bench.run("--specdec-suite", "suite", "--collect-only", "-q", *option)
    result.stdout.fnmatch_lines([f"{count}/29 tests collected*"])
    assert "PytestUnknownMarkWarning" not in result.stdout.str()


def test_several_suites_and_a_path(bench):
    bench.suite(SWEEP)
    other = bench.path / "elsewhere.yml"
    other.write_text(f"cases: [{{name: x, target: {bench.models['target']}, prompts: [hi]}}]\n")
    result = bench.run("--specdec-suite", "suite", "--specdec-suite", str(other), "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*30 tests collected*"])
    assert any(line.startswith("elsewhere.yml::x[ar,cpu,fp32,bs=1]") for line in result.outlines)


def test_an_unknown_suite_name_is_a_usage_error(bench):
    result = bench.run("--specdec-suite", "nope", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--specdec-suite nope: no suite named 'nope'*known suites*"])


BASE = """defaults:
  prompts: [hello]
cases:
  - name: x
    target: {target}
    draft: {same}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cases: [ {{name: x\n", ":2: YAML syntax error: *expected ',' or '}'*"),
        (BASE + "    temperatures: [0]\n", ":7: cases[0].temperatures: unknown case key 'temperatures' (did you mean*"),
        (BASE + "    rounds: three\n", ":7: cases[0].rounds: expected an integer >= 1, got 'three' (str)"),
        (BASE + "    k: [2, 0]\n", ":7: cases[0].k[1]: k must be an integer >= 1, got 0"),
        (BASE + "    device: tpu\n", ":7: cases[0].device: unknown device 'tpu': expected one of cpu, cuda*mps"),
        (BASE + "    dtype: float8\n", ":7: cases[0].dtype: unknown dtype 'float8': expected one of float32*"),
        (BASE + "    top_p: 1.5\n", ":7: cases[0].top_p: top_p must be in (0, 1], got 1.5"),
        (BASE + "    policy: greedy-ish\n", ":7: cases[0].policy: unknown acceptance policy 'greedy-ish'*"),
        (BASE + "    adaptive_k: {{min_k: 4, max_k: 2}}\n", ":7: cases[0].adaptive_k: adaptive max_k (2) must be >=*"),
        (BASE + "    prompts: {{file: missing.jsonl}}\n", ":7: cases[0].prompts.file: prompt file 'missing.jsonl'*"),
        (BASE + "    prompts: {{file: zoo:no-such-set}}\n", ":7: cases[0].prompts.file: the zoo has no prompt set*"),
        (BASE.replace("{same}", "s3://bucket/draft"), ":6: cases[0].draft: unknown model scheme 's3://bucket/draft'*"),
        (BASE.replace("{same}", "foo:bar"), ":6: cases[0].draft: unknown model scheme 'foo:bar': expected zoo:NAME*"),
        (BASE + "    draft: {unrelated}\n", ":7: cases[0].draft: duplicate key 'draft' (first written on line 6)*"),
        ("cases:\n  - name: x\n    prompts: [hi]\n", ":2: cases[0]: missing key 'target' (here or in `defaults`)*"),
        ("cases: []\n", ":1: cases: expected a non-empty list of cases*"),
        ("", ": expected a mapping with keys schema_version, description, defaults, cases*got an empty file"),
        (BASE + "  - name: x\n    target: {target}\n", ":7: cases[1].name: case name 'x' is already used by cases[0]"),
    ],
    ids=[
        "yaml-syntax",
        "unknown-key",
        "wrong-type",
        "k-below-1",
        "unknown-device",
        "unknown-dtype",
        "engine-rule",
        "unknown-policy",
        "adaptive-bounds",
        "missing-prompt-file",
        "missing-zoo-prompts",
        "unknown-scheme-url",
        "unknown-scheme-prefix",
        "duplicate-key",
        "missing-target",
        "no-cases",
        "empty-file",
        "duplicate-name",
    ],
)
def test_a_malformed_suite_fails_collection_naming_file_key_and_line(bench, text, expected):
    path = bench.suite(text)
    result = bench.run("--specdec-suite", "suite")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting bench_suites/suite.yaml*"])
    errors = [line for line in result.outlines if line.startswith("invalid benchmark suite: ")]
    assert len(errors) == 1 and _matches(errors[0], f"invalid benchmark suite: {path}{expected}"), errors
    assert "Traceback" not in result.stdout.str()


def _matches(line: str, pattern: str) -> bool:
    """``pattern``'s pieces between ``*`` appear in order, the first at the start (no fnmatch: ids hold brackets)."""
    pieces = pattern.split("*")
    if not line.startswith(pieces[0]):
        return False
    position = len(pieces[0])
    for piece in pieces[1:]:
        found = line.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def test_prompt_files_are_relative_to_the_suite_and_counted(bench):
    (bench.path / "bench_suites").mkdir()
    (bench.path / "bench_suites" / "p.jsonl").write_text('{"prompt": "a"}\n"b"\n[5, 6, 7]\n')
    path = bench.suite(BASE + "    prompts: {{file: p.jsonl, count: 4}}\n")
    result = bench.run("--specdec-suite", "suite", "--collect-only")
    expected = f"invalid benchmark suite: {path}:7: cases[0].prompts.count: count is 4 but p.jsonl holds only 3 prompts"
    assert expected in result.outlines
    bench.suite(BASE + "    prompts: {{file: p.jsonl, count: 3}}\n")
    assert bench.run("--specdec-suite", "suite", "--collect-only").ret == pytest.ExitCode.OK


@pytest.mark.parametrize("name", ["cpu-smoke", "t4", "h100", "mps"])
def test_shipped_suites_parse(name):
    suite = parse_suite(ROOT / "bench_suites" / f"{name}.yaml")
    cases = expand(suite)
    assert cases and len({c.id for c in cases}) == len(cases)
    assert all(c.baseline_id in {x.id for x in cases} for c in cases if not c.is_autoregressive)


def test_the_t4_suite_declares_the_seeds_experiments():
    ids = {c.id for c in expand(parse_suite(ROOT / "bench_suites" / "t4.yaml"))}
    for k in (1, 2, 3, 4):
        for n in (32, 64):
            assert f"gpt2[k={k},cuda,fp16,bs=1,n={n}]" in ids
    for batch in (1, 2, 4):
        assert f"llama-3.2-3b[k=4,cuda,fp16,bs={batch}]" in ids
        assert f"llama-3.2-3b[ar,cuda,fp16,bs={batch}]" in ids
