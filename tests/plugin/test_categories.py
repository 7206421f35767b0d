"""Prompt categories: the zoo's category set, selecting categories in a suite (and its errors), batches that never
mix categories, ``by_category`` adding up exactly, and the per-category table and reports of a run."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from pytest_specdec.cases import Case, expand
from pytest_specdec.errors import SuiteError
from pytest_specdec.models import ModelCache
from pytest_specdec.runner import build_engine, measure
from pytest_specdec.suite import parse_suite
from specdec import GenerationConfig, SpeculationConfig
from specdec.zoo.prompts import prompt_set_file

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = ("conversation", "translation", "summarization", "qa", "math", "rag")
ZOO_SET = prompt_set_file("zoo:spec-categories")


def zoo_rows() -> list[dict]:
    return [json.loads(line) for line in ZOO_SET.read_text(encoding="utf-8").splitlines() if line.strip()]


def suite(tmp_path: Path, prompts: str, target: str = "zoo:tiny-code-target", extra: str = "") -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(
        f"defaults:\n  prompts: {prompts}\ncases:\n  - name: c\n    target: {target}\n{extra}", encoding="utf-8"
    )  # `prompts` is on line 2
    return path


def cases(path: Path) -> list[Case]:
    return expand(parse_suite(path))


def error(path: Path) -> str:
    with pytest.raises(SuiteError) as raised:
        cases(path)
    message = str(raised.value)
    assert message.startswith(f"{path}:"), message
    return message[len(str(path)) :]


# ------------------------------------------------------------------------------------------------ the prompt set
def test_the_zoo_set_has_six_categories_of_at_least_twelve_original_prompts():
    rows = zoo_rows()
    counts = Counter(row["category"] for row in rows)
    assert tuple(counts) == CATEGORIES and min(counts.values()) >= 12
    assert len({row["id"] for row in rows}) == len(rows) and len({row["prompt"] for row in rows}) == len(rows)
    for row in rows:
        assert row["id"].startswith(row["category"] + "-") and 0 < len(row["prompt"]) < 1200
        if row["category"] == "conversation":  # a dialogue that ends with the user's turn, the reply left to write
            lines = row["prompt"].splitlines()
            assert lines[-1] == "Assistant:" and lines[-2].startswith("User: ") and lines[0].startswith("User: ")
        if row["category"] == "rag":  # passages, then the question
            assert row["prompt"].count("Passage ") >= 2 and row["prompt"].index("Question:") > 0


def test_a_suite_selects_categories_with_count_per_category(tmp_path):
    (case,) = cases(suite(tmp_path, '{file: "zoo:spec-categories", categories: [math, translation], count: 3}'))
    rows = zoo_rows()
    first = {c: [r["prompt"] for r in rows if r["category"] == c][:3] for c in ("math", "translation")}
    assert case.prompts.prompts == tuple(first["math"] + first["translation"])
    assert case.prompts.categories == ("math",) * 3 + ("translation",) * 3
    assert case.prompts.category_counts() == {"math": 3, "translation": 3}


def test_without_a_selection_every_category_is_taken_in_the_files_order(tmp_path):
    (case,) = cases(suite(tmp_path, '{file: "zoo:spec-categories", count: 2}'))
    assert case.prompts.category_counts() == dict.fromkeys(CATEGORIES, 2)
    (whole,) = cases(suite(tmp_path, '{file: "zoo:spec-categories"}'))
    assert whole.prompts.count == len(zoo_rows())


def test_the_selection_is_part_of_the_case_digest(tmp_path):
    def digest(prompts: str) -> str:
        return cases(suite(tmp_path, prompts))[0].digest()

    math = digest('{file: "zoo:spec-categories", categories: [math], count: 2}')
    assert math == digest('{file: "zoo:spec-categories", categories: math, count: 2}')  # one category, unlisted
    assert math != digest('{file: "zoo:spec-categories", categories: [qa], count: 2}')
    assert math != digest('{file: "zoo:spec-categories", categories: [math], count: 3}')
    both = digest('{file: "zoo:spec-categories", categories: [math, qa], count: 2}')
    assert both != digest('{file: "zoo:spec-categories", categories: [qa, math], count: 2}')


def test_sets_without_categories_keep_their_recorded_digests():
    """The digest counts categories only where there are some: cpu-smoke's baselines stay current."""
    recorded = json.loads((ROOT / "baselines" / "cpu-smoke" / "cpu-x86_64-2c.json").read_text())["cases"]
    for case in cases(ROOT / "bench_suites" / "cpu-smoke.yaml"):
        assert case.digest() == recorded[case.id]["digest"], case.id


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        (
            '{file: "zoo:spec-categories", categories: [math, maths]}',
            ":2: defaults.prompts.categories[1]: unknown category 'maths' (did you mean 'math'?): "
            "spec-categories.jsonl has conversation, translation, summarization, qa, math, rag",
        ),
        (
            '{file: "zoo:spec-categories", categories: [qa, qa]}',
            ":2: defaults.prompts.categories[1]: category 'qa' is listed twice: give each category once",
        ),
        (
            '{file: "zoo:spec-categories", categories: []}',
            ":2: defaults.prompts.categories: expected a non-empty list of categories of spec-categories.jsonl: "
            "conversation, translation, summarization, qa, math, rag",
        ),
        (
            '{file: "zoo:spec-categories", categories: [rag], count: 50}',
            ":2: defaults.prompts.count: count is 50 per category but category 'rag' of spec-categories.jsonl holds "
            "only 13 prompts",
        ),
        (
            '{file: "zoo:code-heldout", categories: [math]}',
            ":2: defaults.prompts.categories: code-heldout.jsonl has no categories (no row has a `category`)",
        ),
        (
            "{random_tokens: 8, categories: [math]}",
            ":2: defaults.prompts.categories: `categories` only applies to a prompt `file` with categories",
        ),
    ],
    ids=["unknown", "twice", "empty", "count", "no-categories", "random"],
)
def test_category_errors_name_the_file_line_and_key(tmp_path, prompts, expected):
    assert error(suite(tmp_path, prompts)).startswith(expected)


def test_a_file_that_gives_some_rows_a_category_must_give_all(tmp_path):
    (tmp_path / "p.jsonl").write_text(
        '{"prompt": "a", "category": "x"}\n{"prompt": "b"}\n', encoding="utf-8"
    )  # row 1 has none
    message = error(suite(tmp_path, "{file: p.jsonl}"))
    assert message.startswith(":2: defaults.prompts.file: prompt 1 in p.jsonl: expected a `category` (text), got None")


# ---------------------------------------------------------------------------------------------------- batches
@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_batches_never_mix_categories(tmp_path, batch_size):
    (case,) = cases(suite(tmp_path, '{file: "zoo:spec-categories", categories: [qa, rag, math], count: 3}'))
    prompt_set = case.prompts
    of = dict(zip(prompt_set.prompts, prompt_set.categories, strict=True))
    batches = prompt_set.batches(vocab_size=100, batch_size=batch_size)
    assert all(len(b.prompts) == batch_size and {of[p] for p in b.prompts} == {b.category} for b in batches)
    assert [b.category for b in batches] == [c for c in ("qa", "rag", "math") for _ in range(-(-3 // batch_size))]
    assert {p for b in batches for p in b.prompts} == set(prompt_set.prompts)  # every prompt, at least once


# ------------------------------------------------------------------------------------------- exact aggregation
def test_by_category_adds_up_to_the_case_and_matches_each_categorys_own_runs(tmp_path, model_folders):
    lines = [
        ("a", "def parse_args(argv):\n"),
        ("a", "for index, value in enumerate(values):\n"),
        ("b", "class Config:\n    def __init__(self, name):\n"),
        ("b", "import os\nimport sys\n"),
        ("b", "print(os.path.join(sys.prefix, 'lib'))\n"),
        ("c", "total += value\n"),
    ]
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({"category": c, "prompt": p}) + "\n" for c, p in lines), encoding="utf-8"
    )
    path = suite(
        tmp_path,
        "{file: p.jsonl}",
        target=str(model_folders["target"]),
        extra=f"    draft: {model_folders['unrelated']}\n    k: 3\n    batch_size: 2\n    max_new_tokens: 10\n"
        "    rounds: 1\n    warmup_rounds: 0\n",
    )
    case = next(c for c in cases(path) if not c.is_autoregressive)
    models = ModelCache(allow_download=False)
    engine = build_engine(case, models)
    measurement = measure(case, engine)

    by_category = {c.category: c for c in measurement.by_category}
    assert list(by_category) == ["a", "b", "c"]
    assert sum(c.prompts for c in by_category.values()) == case.prompts.count == 6
    tallies = [c.tally for c in by_category.values()]
    assert sum(t.drafted for t in tallies) > 0
    assert measurement.acceptance_rate == sum(t.accepted for t in tallies) / sum(t.drafted for t in tallies)
    assert all(t.steps < t.row_steps <= 2 * t.steps for t in tallies)  # a batch of 2 rows, one may finish first
    assert measurement.mean_accepted_length == sum(t.accepted + t.row_steps for t in tallies) / sum(
        t.row_steps for t in tallies
    )
    assert sum((t.positions for t in tallies[1:]), tallies[0].positions) == measurement.positions

    for category, mine in by_category.items():  # each category's counts, recomputed from its own generate calls
        texts = [p for c, p in lines if c == category]
        batches = [texts[i : i + 2] for i in range(0, len(texts), 2)]
        batches[-1] += texts[: 2 - len(batches[-1])]  # the last batch is filled by cycling, as the suite does
        generation = GenerationConfig(max_new_tokens=10, stop_at_eos=False)
        runs = [engine.generate(b, generation, SpeculationConfig(k=3)).metrics for b in batches]
        drafted, accepted = sum(m.drafted_tokens for m in runs), sum(m.accepted_tokens for m in runs)
        assert (mine.tally.drafted, mine.tally.accepted) == (drafted, accepted)
        assert mine.tally.acceptance_rate == (accepted / drafted if drafted else None)
        report = measurement.category_report(measurement)[category]  # against itself: speedup exactly 1
        assert report["speedup"] == 1.0 and report["prompts"] == mine.prompts
    models.clear()


# ------------------------------------------------------------------------------------------------- end to end
def test_a_run_reports_each_category_in_the_table_extra_info_json_and_csv(bench):
    rows = [
        {"category": "code", "prompt": "def parse_args(argv):\n"},
        {"category": "code", "prompt": "class Config:\n"},
        {"category": "loops", "prompt": "for index, value in enumerate(values):\n"},
    ]
    (bench.path / "bench_suites").mkdir(exist_ok=True)
    (bench.path / "bench_suites" / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench.suite(
        "defaults: {{rounds: 1, warmup_rounds: 0, max_new_tokens: 8, prompts: {{file: p.jsonl}}}}\n"
        "cases:\n  - {{name: pair, target: {target}, draft: {same}, k: 3}}\n"
    )
    result = bench.run(
        "--specdec-suite", "suite", "--specdec-report-json", "r.json", "--specdec-report-csv", "r.csv",
        "--benchmark-json", "b.json",
    )  # fmt: skip
    result.assert_outcomes(passed=2)
    result.stdout.re_match_lines(
        [
            r"per prompt category: speedup / tau .*",
            r"case +code +loops",
            r"pair\[ar,cpu,fp32,bs=1\] +- / 1\.00 +- / 1\.00",
            r"pair\[k=3,cpu,fp32,bs=1\] +[\d.]+x / 3\.[\d]+ +[\d.]+x / 3\.[\d]+",  # the draft is the target: tau ~4
        ]
    )
    report = json.loads((bench.path / "r.json").read_text())["suites"]["suite"]
    extra = {b["name"]: b["extra_info"] for b in json.loads((bench.path / "b.json").read_text())["benchmarks"]}
    for row in report:
        assert row["by_category"] == extra[row["case"]]["by_category"]
        assert sum(c["prompts"] for c in row["by_category"].values()) == 3
    speculative = report[1]["by_category"]
    assert speculative["code"]["acceptance_rate"] == 1.0 and speculative["loops"]["speedup"] > 0
    assert report[1]["acceptance_by_position"] == [1.0, 1.0, 1.0] and report[1]["mean_accepted_length"] > 3
    with open(bench.path / "r.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(r["case"], r["category"]) for r in csv_rows] == [
        (case, category) for case in (report[0]["case"], report[1]["case"]) for category in ("", "code", "loops")
    ]
    code = csv_rows[4]
    assert code["prompts"] == "2" and float(code["speedup"]) == speculative["code"]["speedup"]
    assert code["ttft_s"] == "" and json.loads(csv_rows[3]["acceptance_by_position"]) == [1.0, 1.0, 1.0]
