"""Engines in suites: `engine:` runs transformers' own generate (static cache, compiled, assisted, prompt lookup)
beside specdec on the same prompts, measured against the same autoregressive case, in the same table and reports;
the ids and digests of specdec's own cases are those they were before engines existed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import transformers
from suite_text import suite_cases, suite_error
from tiny_models import loaded, make_model

from pytest_specdec.cases import expand
from pytest_specdec.suite import parse_suite
from specdec import GenerationConfig
from specdec.hf_engine import HF_COMPILE, HFEngine, HFUnavailableError

ROOT = Path(__file__).resolve().parents[2]

HEAD = """\
defaults:
  prompts: [hello]
cases:
  - name: x
    target: zoo:tiny-code-target
"""  # a case's keys start on line 6


def test_engines_expand_into_cases_with_the_mode_in_the_id(tmp_path):
    cases = suite_cases(
        tmp_path,
        HEAD
        + "    draft: [zoo:tiny-code-draft, {method: ngram}]\n    k: [2, 4]\n    device: [cpu, cuda]\n"
        + "    engine: [specdec, hf, hf-assisted]\n",
    )
    ids = [c.id for c in cases if c.device == "cpu"]
    assert ids == [
        "x[ar,cpu,fp32,bs=1]",
        "x[model,k=2,cpu,fp32,bs=1]",
        "x[model,k=4,cpu,fp32,bs=1]",
        "x[ngram,k=2,cpu,fp32,bs=1]",
        "x[ngram,k=4,cpu,fp32,bs=1]",
        "x[engine=hf-static,cpu,fp32,bs=1]",  # hf on a CPU: the static cache (compiling takes minutes here)
        "x[engine=hf-assisted,model,k=2,cpu,fp32,bs=1]",
        "x[engine=hf-assisted,model,k=4,cpu,fp32,bs=1]",
        "x[engine=hf-lookup,ngram,k=2,cpu,fp32,bs=1]",  # hf-assisted with {method: ngram}: prompt lookup
        "x[engine=hf-lookup,ngram,k=4,cpu,fp32,bs=1]",
    ]
    cuda = [c.id for c in cases if c.device == "cuda" and c.engine.startswith("hf-") and c.speculation is None]
    assert cuda == ["x[engine=hf-static,cuda,fp32,bs=1]", "x[engine=hf-compile,cuda,fp32,bs=1]"]
    by_id = {c.id: c for c in cases}
    static, lookup = by_id["x[engine=hf-static,cpu,fp32,bs=1]"], by_id["x[engine=hf-lookup,ngram,k=4,cpu,fp32,bs=1]"]
    assert static.baseline_id == lookup.baseline_id == "x[ar,cpu,fp32,bs=1]"  # one denominator for every engine
    assert (static.k_label, static.draft_method, static.policy, static.is_autoregressive) == ("-", None, "none", False)
    assert (lookup.engine, lookup.draft_method, lookup.k_label, lookup.models) == (
        "hf-lookup",
        "ngram",
        "4",
        (("zoo:tiny-code-target", "cpu", "float32"),),
    )
    assert len({c.digest() for c in cases}) == len(cases)  # the engine is part of the digest


def test_without_specdec_only_the_autoregressive_case_of_the_engine_remains_as_denominator(tmp_path):
    ids = [c.id for c in suite_cases(tmp_path, HEAD + "    engine: hf-compile\n")]
    assert ids == ["x[ar,cpu,fp32,bs=1]", "x[engine=hf-compile,cpu,fp32,bs=1]"]  # asked for by name: on a CPU too


def test_the_default_engine_keeps_ids_and_digests_of_the_recorded_baselines():
    for name in ("cpu-smoke", "drafters"):
        recorded = json.loads((ROOT / "baselines" / name / "cpu-x86_64-2c.json").read_text())["cases"]
        cases = expand(parse_suite(ROOT / "bench_suites" / f"{name}.yaml"))
        assert {c.id: c.digest() for c in cases} == {case_id: entry["digest"] for case_id, entry in recorded.items()}
        assert {c.engine for c in cases} == {"specdec"}


def test_writing_the_default_engine_changes_nothing(tmp_path):
    plain = suite_cases(tmp_path, HEAD + "    draft: zoo:tiny-code-draft\n")
    spelled = suite_cases(tmp_path, HEAD + "    draft: zoo:tiny-code-draft\n    engine: specdec\n")
    assert [(c.id, c.digest()) for c in plain] == [(c.id, c.digest()) for c in spelled]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("    engine: vllm\n", ":6: cases[0].engine: unknown engine 'vllm': expected one of specdec, hf, hf-static,"),
        ("    engine: [specdec, hf-asisted]\n", ":6: cases[0].engine[1]: unknown engine 'hf-asisted' (did you mean"),
        ("    engine: hf-assisted\n", ":6: cases[0].engine: engine hf-assisted needs a `draft`: a draft model, or"),
        (
            "    draft: [zoo:tiny-code-draft, {method: suffix}]\n    engine: [specdec, hf-assisted]\n",
            ":7: cases[0].engine: engine hf-assisted runs transformers' assisted generation with a draft model, or its "
            "prompt lookup for {method: ngram}; transformers has no 'suffix' drafter",
        ),
        (
            "    draft: {method: ngram}\n    batch_size: [1, 2]\n    engine: hf-assisted\n",
            ":8: cases[0].engine: engine hf-assisted runs one prompt at a time",
        ),
        ("    engine: [hf, hf-static]\n", ":6: cases[0].engine: 'hf' already runs hf-static (and hf-compile on CUDA)"),
        ("    engine: [hf, hf]\n", ":6: cases[0].engine[1]: 'hf' is listed twice (also as cases[0].engine[0])"),
    ],
    ids=["unknown", "typo", "assisted-without-draft", "assisted-with-suffix", "assisted-batch", "hf-twice", "repeat"],
)
def test_a_bad_engine_fails_collection_naming_line_and_key(tmp_path, text, expected):
    assert suite_error(tmp_path, HEAD + text).startswith(expected)


def test_an_engine_error_from_the_defaults_points_at_the_defaults(tmp_path):
    text = "defaults:\n  prompts: [hello]\n  engine: hf-assisted\ncases:\n  - {name: x, target: zoo:tiny-code-target}\n"
    assert suite_error(tmp_path, text).startswith(":3: defaults.engine: engine hf-assisted needs a `draft`")


def test_the_engines_suites_mix_every_engine_on_the_same_prompts():
    cpu = expand(parse_suite(ROOT / "bench_suites" / "engines.yaml"))
    assert {c.engine for c in cpu} == {"specdec", "hf-static", "hf-assisted", "hf-lookup"}
    assert {c.prompts.source for c in cpu} == {"zoo:code-heldout", "zoo:code-repeat"}
    gpu = expand(parse_suite(ROOT / "bench_suites" / "engines-gpu.yaml"))
    assert {c.engine for c in gpu} == {"specdec", "hf-static", "hf-compile", "hf-assisted", "hf-lookup"}
    assert {c.target.partition("@")[0] for c in gpu} == {"zoo:synthetic/llama-3.2-1b", "zoo:synthetic/llama-3.1-8b"}
    for cases in (cpu, gpu):
        ids = {c.id for c in cases}
        assert len(ids) == len(cases) and all(c.baseline_id in ids for c in cases if not c.is_autoregressive)


RUN = """
defaults: {{rounds: 1, warmup_rounds: 0, max_new_tokens: 10, prompts: ["def f(x):\\n    return x + x + x + x + x"]}}
cases:
  - name: e
    target: {target}
    draft: [{same}, {{method: ngram}}]
    k: 3
    engine: [specdec, hf, hf-assisted]
"""


def test_every_engine_runs_on_the_same_prompts_with_the_target_s_own_greedy_output(bench):
    bench.suite(RUN)
    result = bench.run(
        "--specdec-suite", "suite", "--specdec-report-json", "r.json", "--specdec-report-csv", "r.csv",
        "--benchmark-json", "bench.json",
    )  # fmt: skip
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["case * engine * draft * K * acceptance*"])
    result.stdout.re_match_lines(
        [
            r"e\[ar,cpu,fp32,bs=1\] +specdec +- +ar ",
            r"e\[engine=hf-static,cpu,fp32,bs=1\] +hf-static +- +- +- +1 +1 +[\d.]+ +[\d.]+ +[\d.]+x ",
            r"e\[engine=hf-assisted,model,k=3,cpu,fp32,bs=1\] +hf-assisted +model +3 +1\.000 ",
            r"e\[engine=hf-lookup,ngram,k=3,cpu,fp32,bs=1\] +hf-lookup +ngram +3 ",
        ]
    )
    rows = {r["case"]: r for r in json.loads((bench.path / "r.json").read_text())["suites"]["suite"]}
    assert len({r["output_hash"] for r in rows.values()}) == 1  # greedy: every engine gives the target's tokens
    assert {r["engine"] for r in rows.values()} == {"specdec", "hf-static", "hf-assisted", "hf-lookup"}
    assert {r["speedup_over"] for r in rows.values()} == {None, "e[ar,cpu,fp32,bs=1]"}
    assisted = rows["e[engine=hf-assisted,model,k=3,cpu,fp32,bs=1]"]
    assert assisted["acceptance_rate"] == 1.0 and assisted["tokens_per_forward"] > 1  # the draft equals the target
    assert rows["e[engine=hf-static,cpu,fp32,bs=1]"]["tokens_per_forward"] == 1.0
    with open(bench.path / "r.csv", newline="") as handle:
        assert {r["case"]: r["engine"] for r in csv.DictReader(handle)}["e[engine=hf-static,cpu,fp32,bs=1]"] == (
            "hf-static"
        )
    extra = {b["name"]: b["extra_info"] for b in json.loads((bench.path / "bench.json").read_text())["benchmarks"]}
    lookup = extra["e[engine=hf-lookup,ngram,k=3,cpu,fp32,bs=1]"]
    assert lookup["engine"] == "hf-lookup" and lookup["decoder_path"] == "transformers"
    assert lookup["acceptance_rate"] is not None  # the prompt repeats itself: transformers' lookup drafted
    assert extra["e[ar,cpu,fp32,bs=1]"]["engine"] == "specdec"


def test_engines_are_gated_and_selected_like_any_case(bench):
    bench.suite(RUN)
    bench.run("--specdec-suite", "suite", "--specdec-update-baselines", "-k", "hf").assert_outcomes(passed=3)
    assert set(bench.baseline()["cases"]) == {
        "e[engine=hf-static,cpu,fp32,bs=1]",
        "e[engine=hf-assisted,model,k=3,cpu,fp32,bs=1]",
        "e[engine=hf-lookup,ngram,k=3,cpu,fp32,bs=1]",
    }
    assert all(entry["greedy"] and entry["output_hash"] for entry in bench.baseline()["cases"].values())
    selected = bench.run("--specdec-suite", "suite", "--collect-only", "-q", "-m", "specdec(engine='hf-static')")
    assert [line for line in selected.outlines if "::" in line] == [
        "bench_suites/suite.yaml::e[engine=hf-static,cpu,fp32,bs=1]"
    ]


@pytest.fixture(scope="module")
def broken_compile() -> transformers.CompileConfig:
    """A compile config whose torch.compile fails for real (an unknown backend), tried once here first: pytester
    forgets the modules imported while its fixture lives, and torch's compiler modules register themselves in torch
    when imported, so a second import (by a later test that compiles) would fail. A module fixture runs before it."""
    broken = transformers.CompileConfig(backend="no-such-backend", mode=None)
    tiny = loaded(make_model("llama", seed=0, layers=1), "tiny")
    with pytest.raises(HFUnavailableError):
        HFEngine(tiny, HF_COMPILE, compile_config=broken).generate([5, 6, 7], GenerationConfig(max_new_tokens=2))
    return broken


def test_an_hf_compile_case_that_cannot_compile_skips_with_the_reason(broken_compile, bench, monkeypatch):
    monkeypatch.setattr(transformers, "CompileConfig", lambda **options: broken_compile)
    bench.suite(
        "defaults: {{rounds: 1, warmup_rounds: 0, max_new_tokens: 4, prompts: [hello]}}\n"
        "cases: [{{name: c, target: {target}, engine: hf-compile}}]\n"
    )
    result = bench.run("--specdec-suite", "suite")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["skipped (1 case): hf-compile is unavailable with torch *no-such-backend*"])
