"""Drafting methods in suites: `draft:` as a model or a `{method: ..., OPTION: VALUE}` mapping, swept like any value;
ids name the method, bad methods and options fail collection at their line, and runs record the method."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pytest_specdec.cases import expand
from pytest_specdec.suite import parse_suite

ROOT = Path(__file__).resolve().parents[2]

SWEEP = """
defaults: {{rounds: 1, warmup_rounds: 0, max_new_tokens: 8, prompts: ["def parse_args("]}}
cases:
  - name: all
    target: {target}
    draft:
      - {same}
      - {{method: ngram, max_ngram: 2}}
      - {{method: ngram, max_ngram: 4, min_ngram: 2}}
      - {{method: suffix}}
      - {{method: layerskip, layers: 1}}
    k: [2, 4]
  - name: lookup
    target: {target}
    draft: {{method: ngram}}
    k: 3
  - name: models
    target: {target}
    draft: [{same}, {{method: model, model: {unrelated}}}]
    k: 3
  - name: plain
    target: {target}
    draft: {same}
    k: 3
"""


def _ids(result: pytest.RunResult) -> list[str]:
    return [line.split("::", 1)[1] for line in result.outlines if line.startswith("bench_suites/suite.yaml::")]


def test_a_draft_sweep_collects_one_case_per_method_with_readable_ids(bench):
    bench.suite(SWEEP)
    result = bench.run("--specdec-suite", "suite", "--collect-only", "-q")
    drafts = ("model", "ngram-max_ngram=2-min_ngram=1", "ngram-max_ngram=4-min_ngram=2", "suffix", "layerskip")
    assert _ids(result) == [
        "all[ar,cpu,fp32,bs=1]",
        *(f"all[{draft},k={k},cpu,fp32,bs=1]" for draft in drafts for k in (2, 4)),
        "lookup[ar,cpu,fp32,bs=1]",
        "lookup[ngram,k=3,cpu,fp32,bs=1]",
        "models[ar,cpu,fp32,bs=1]",
        "models[model-same,k=3,cpu,fp32,bs=1]",
        "models[model-unrelated,k=3,cpu,fp32,bs=1]",
        "plain[ar,cpu,fp32,bs=1]",
        "plain[k=3,cpu,fp32,bs=1]",  # a lone draft model keeps the ids (and baselines) it had before methods
    ]
    selected = bench.run("--specdec-suite", "suite", "--collect-only", "-q", "-k", "ngram and not all")
    assert _ids(selected) == ["lookup[ngram,k=3,cpu,fp32,bs=1]"]
    exact = bench.run("--specdec-suite", "suite", "--collect-only", "-q", "-m", "specdec(draft='layerskip', k=4)")
    assert _ids(exact) == ["all[layerskip,k=4,cpu,fp32,bs=1]"]


BASE = """defaults:
  prompts: [hello]
cases:
  - name: x
    target: {target}
"""


@pytest.mark.parametrize(
    ("draft", "expected"),
    [
        ("{{method: ngrm}}", ":6: cases[0].draft.method: unknown draft method 'ngrm' (did you mean 'ngram'?)*"),
        ("{{method: ngram, max_gram: 4}}", ":6: cases[0].draft.max_gram: unknown ngram draft key 'max_gram' (did*"),
        ("{{method: ngram, max_ngram: '4'}}", ":6: cases[0].draft.max_ngram: option 'max_ngram' *must be int*"),
        ("{{method: ngram, min_ngram: 5}}", ":6: cases[0].draft.min_ngram: *min_ngram <= max_ngram*"),
        ("{{method: layerskip, layers: 0}}", ":6: cases[0].draft.layers: layerskip drafter: layers must be >= 1*"),
        ("{{method: suffix, min_prob: 2}}", ":6: cases[0].draft.min_prob: suffix drafter: min_prob must be in*"),
        ("ngram", ":6: cases[0].draft: 'ngram' is a drafting method, not a model: write {method: ngram}*"),
        ("{{method: model}}", ":6: cases[0].draft: draft method 'model' needs `model`*"),
        ("{{method: ngram, model: {same}}}", ":6: cases[0].draft.model: draft method 'ngram' drafts without a model*"),
        ("{{max_ngram: 3}}", ":6: cases[0].draft: a draft mapping needs `method`: one of model, ngram, suffix*"),
        ("[{{method: ngram}}, {{method: ngram, max_ngram: 3}}]", ":6: cases[0].draft[1]: * is listed twice*"),
        ("\n      - {{method: suffix}}\n      - {{method: sufix}}", ":8: cases[0].draft[1].method: unknown draft*"),
    ],
    ids=[
        "unknown-method",
        "unknown-option",
        "option-type",
        "option-rule",
        "layers-below-1",
        "probability",
        "method-as-model",
        "model-without-model",
        "model-for-ngram",
        "no-method",
        "default-spelled-out-twice",
        "line-of-list-item",
    ],
)
def test_a_bad_draft_method_or_option_fails_collection_naming_file_line_and_key(bench, draft, expected):
    path = bench.suite(BASE + "    draft: " + draft + "\n")
    result = bench.run("--specdec-suite", "suite", "--collect-only")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    errors = [line for line in result.outlines if line.startswith("invalid benchmark suite: ")]
    assert len(errors) == 1 and _matches(errors[0], f"invalid benchmark suite: {path}{expected}"), errors
    assert "Traceback" not in result.stdout.str()


def _matches(line: str, pattern: str) -> bool:
    pieces = pattern.split("*")
    position = len(pieces[0])
    if not line.startswith(pieces[0]):
        return False
    for piece in pieces[1:]:
        found = line.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return True


RUN = """
defaults: {{rounds: 1, warmup_rounds: 0, max_new_tokens: 12, prompts: ["def f(x):\\n    return x + x + x + x + x"]}}
cases:
  - name: lookup
    target: {target}
    draft: [{{method: ngram, max_ngram: {max_ngram}}}, {{method: layerskip, layers: 1}}]
    k: 3
"""


def test_a_model_free_case_runs_losslessly_and_its_reports_name_the_method(bench):
    bench.suite(RUN.replace("{max_ngram}", "2"))
    result = bench.run(
        "--specdec-suite", "suite", "--specdec-report-json", "r.json", "--specdec-report-csv", "r.csv",
        "--benchmark-json", "bench.json",
    )  # fmt: skip
    result.assert_outcomes(passed=3)
    result.stdout.re_match_lines(
        [r"lookup\[ar,cpu,fp32,bs=1\] +specdec +- +ar ", r"lookup\[ngram,k=3,cpu,fp32,bs=1\] +specdec +ngram +3 "]
    )
    rows = {r["case"]: r for r in json.loads((bench.path / "r.json").read_text())["suites"]["suite"]}
    ar, ngram, skip = (
        rows["lookup[ar,cpu,fp32,bs=1]"],
        rows["lookup[ngram,k=3,cpu,fp32,bs=1]"],
        rows["lookup[layerskip,k=3,cpu,fp32,bs=1]"],
    )
    assert (ar["draft_method"], ngram["draft_method"], skip["draft_method"]) == (None, "ngram", "layerskip")
    assert ngram["draft_options"] == "max_ngram=2 min_ngram=1" and ngram["draft"] is None
    assert ngram["output_hash"] == skip["output_hash"] == ar["output_hash"]  # greedy: the target's own tokens
    assert ngram["acceptance_rate"] is not None  # the prompt repeats itself: lookup found matches and drafted
    with open(bench.path / "r.csv", newline="") as handle:
        assert {r["case"]: r["draft_method"] for r in csv.DictReader(handle)}["lookup[ngram,k=3,cpu,fp32,bs=1]"] == (
            "ngram"
        )
    benchmarks = {b["name"]: b["extra_info"] for b in json.loads((bench.path / "bench.json").read_text())["benchmarks"]}
    extra = benchmarks["lookup[ngram,k=3,cpu,fp32,bs=1]"]
    assert extra["draft_method"] == "ngram" and extra["draft_options"] == {"max_ngram": 2, "min_ngram": 1}


def test_changing_a_draft_option_makes_the_baseline_stale(bench):
    bench.suite(RUN.replace("{max_ngram}", "2"))
    bench.run("--specdec-suite", "suite", "--specdec-update-baselines", "-k", "ngram").assert_outcomes(passed=1)
    bench.suite(RUN.replace("{max_ngram}", "3"))
    result = bench.run("--specdec-suite", "suite", "--specdec-strict", "-k", "ngram")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stale baseline for lookup[[]ngram,k=3,cpu,fp32,bs=1[]]*"])


def test_digests_cover_the_method_and_resolved_options(tmp_path):
    def digests(draft: str) -> dict[str, str]:  # K label -> digest
        path = tmp_path / "s.yaml"
        path.write_text(f"cases: [{{name: x, target: zoo:tiny-code-target, draft: {draft}, prompts: [hi]}}]\n")
        return {c.k_label: c.digest() for c in expand(parse_suite(path))}

    default = digests("{method: ngram}")
    assert digests("{method: ngram, max_ngram: 3}") == default  # the default spelled out computes the same
    changed = digests("{method: ngram, max_ngram: 4}")
    assert changed["4"] != default["4"] and changed["ar"] == default["ar"]
    assert digests("{method: suffix}")["4"] != default["4"]
    assert digests("{method: layerskip, layers: 2}")["4"] != digests("{method: layerskip, layers: 3}")["4"]


@pytest.mark.parametrize("name", ["drafters", "drafters-gpu"])
def test_the_drafters_suites_sweep_every_method_at_k_2_4_8_on_both_prompt_sets(name):
    cases = expand(parse_suite(ROOT / "bench_suites" / f"{name}.yaml"))
    assert len({c.id for c in cases}) == len(cases)
    speculative = [c for c in cases if not c.is_autoregressive]
    assert {c.draft_method for c in speculative} == {"model", "ngram", "suffix", "layerskip"}
    assert {c.speculation.k for c in speculative if c.speculation} == {2, 4, 8}
    assert {c.prompts.source for c in cases} == {"zoo:code-heldout", "zoo:code-repeat"}
    assert all(c.baseline_id in {x.id for x in cases} for c in speculative)


def test_the_code_repeat_prompt_set_is_shipped_with_kinds():
    rows = [json.loads(line) for line in (ROOT / "specdec/zoo/models/tiny-code/code-repeat.jsonl").open()]
    assert len(rows) >= 10 and len({r["id"] for r in rows}) == len(rows)
    assert all(r["prompt"].strip() and r["kind"] for r in rows)


def test_the_heads_suite_compares_chain_and_tree_for_each_drafting_method():
    cases = expand(parse_suite(ROOT / "bench_suites" / "heads.yaml"))
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids)
    assert "heldout[model-tiny-code-draft-branching=3,k=4,cpu,fp32,bs=1]" in ids  # a model's variants by option
    assert "heldout[model-tiny-code-draft-branching=1,k=4,cpu,fp32,bs=1]" in ids
    speculative = [c for c in cases if not c.is_autoregressive]
    assert {c.draft_method for c in speculative} == {"model", "ngram", "medusa", "eagle"}
    assert {c.speculation.k for c in speculative if c.speculation} == {4, 6}  # K 6: the deep EAGLE tree's case
    assert "heldout-deep[eagle,k=6,cpu,fp32,bs=1]" in ids
