"""What a suite is checked for at collection, beyond its schema: model names that cannot load, values that would
exhaust the machine, sweeps that list a value twice or multiply into too many cases; and what ``-k`` and ``-m``
select."""

from __future__ import annotations

from pathlib import Path

import pytest
from suite_text import suite_error

from pytest_specdec.cases import MAX_CASES, expand
from pytest_specdec.suite import parse_suite

HEAD = """\
defaults:
  prompts: [hello]
cases:
  - name: x
    target: zoo:tiny-code-target
"""  # a case's keys start on line 6


def _parses(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return [case.id for case in expand(parse_suite(path))]


# ------------------------------------------------------------------------------------------------ model names
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            "zoo:tiny-code-targt",
            ":5: cases[0].target: unknown zoo model 'zoo:tiny-code-targt' (did you mean 'zoo:tiny-code-target'?): "
            "`specdec zoo list` shows the built-in models",
        ),
        (
            "zoo:synthetic/llama-3.2-1bb@mix=0.3",
            ":5: cases[0].target: unknown zoo model 'zoo:synthetic/llama-3.2-1bb@mix=0.3' "
            "(did you mean 'zoo:synthetic/llama-3.2-1b@mix=0.3'?)",
        ),
        (
            "zoo:synthetic/gpt2@mix=2",
            ":5: cases[0].target: zoo model 'zoo:synthetic/gpt2@mix=2': mix must be in [0, 1)",
        ),
        ('"zoo:"', ":5: cases[0].target: unknown zoo model 'zoo:': `specdec zoo list` shows the built-in models"),
    ],
    ids=["trained-typo", "synthetic-typo", "bad-knob", "empty"],
)
def test_a_zoo_name_the_zoo_lacks_is_an_error_with_a_suggestion(tmp_path, model, expected):
    assert suite_error(tmp_path, HEAD.replace("zoo:tiny-code-target", model)).startswith(expected)


def test_zoo_names_the_zoo_has_are_accepted(tmp_path):
    text = HEAD + "    draft: zoo:tiny-code-draft\n  - name: y\n    target: zoo:synthetic/llama-3.2-1b@mix=0.3\n"
    assert "x[k=4,cpu,fp32,bs=1]" in _parses(tmp_path, text)


def test_a_local_model_folder_must_exist_and_be_a_folder(tmp_path):
    (tmp_path / "models" / "tiny-target").mkdir(parents=True)
    (tmp_path / "models" / "weights.bin").write_text("")
    missing = suite_error(tmp_path, HEAD.replace("zoo:tiny-code-target", "./models/tiny-targt"))
    assert missing == (
        f":5: cases[0].target: model folder './models/tiny-targt' does not exist (looked for "
        f"{tmp_path / 'models' / 'tiny-targt'}; a relative path starts at the suite file's folder) "
        "(did you mean './models/tiny-target'?)"
    )
    a_file = suite_error(tmp_path, HEAD.replace("zoo:tiny-code-target", "./models/weights.bin"))
    assert a_file.startswith(":5: cases[0].target: model folder './models/weights.bin' is a file, not a model folder")
    assert _parses(tmp_path, HEAD.replace("zoo:tiny-code-target", "./models/tiny-target/")) == ["x[ar,cpu,fp32,bs=1]"]


def test_hub_ids_are_left_to_the_run(tmp_path):
    """A hub id may be in the local cache, which only loading can tell: it is not checked at collection."""
    assert _parses(tmp_path, HEAD.replace("zoo:tiny-code-target", "org/not-downloaded")) == ["x[ar,cpu,fp32,bs=1]"]


def test_a_zoo_typo_fails_collection_instead_of_skipping_every_case(bench):
    path = bench.suite(HEAD.replace("zoo:tiny-code-target", "zoo:tiny-code-targt") + "    draft: zoo:tiny-code-draft\n")
    result = bench.run("--specdec-suite", "suite")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert (
        f"invalid benchmark suite: {path}:5: cases[0].target: unknown zoo model 'zoo:tiny-code-targt' "
        "(did you mean 'zoo:tiny-code-target'?): `specdec zoo list` shows the built-in models"
    ) in result.outlines


# ------------------------------------------------------------------------------------------ values and sweeps
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "    draft: zoo:tiny-code-draft\n    k: [2, 2]\n",
            ":7: cases[0].k[1]: 2 is listed twice (also as cases[0].k[0])",
        ),
        (
            "    temperature: [0, 0.0]\n",
            ":6: cases[0].temperature[1]: 0.0 is listed twice (also as cases[0].temperature[0])",
        ),
        (
            "    draft: zoo:tiny-code-draft\n    k: 99999999999999999999999\n",
            ":7: cases[0].k: K (tokens drafted per step) is at most 64, got 99,999,999,999,999,999,999,999",
        ),
        (
            "    draft: zoo:tiny-code-draft\n    adaptive_k: {max_k: 1000}\n",
            ":7: cases[0].adaptive_k.max_k: adaptive max_k (tokens drafted per step) is at most 64, got 1,000",
        ),
        (
            "    threads: 100000\n",
            ":6: cases[0].threads: threads (torch intra-op CPU threads) is at most 1,024, got 100,000",
        ),
        (
            "    prompts: {random_tokens: 1000000000000}\n",
            ":6: cases[0].prompts.random_tokens: a prompt length is at most 1,000,000 tokens, got 1,000,000,000,000",
        ),
        (
            "    prompts: {random_tokens: 1000000, count: 100}\n",
            ":6: cases[0].prompts.count: 100 prompts of 1,000,000 random tokens are 100,000,000 token ids; "
            "at most 10,000,000 in all",
        ),
        ("    prompts: ['']\n", ":6: cases[0].prompts[0]: prompt 0: expected non-empty text or a list of token ids"),
    ],
    ids=[
        "k-twice",
        "temperature-twice",
        "huge-k",
        "huge-adaptive-k",
        "threads",
        "random-length",
        "random-total",
        "empty",
    ],
)
def test_values_that_would_duplicate_cases_or_exhaust_the_machine_are_errors(tmp_path, extra, expected):
    assert suite_error(tmp_path, HEAD + extra).startswith(expected)


def test_a_prompt_of_whitespace_is_a_prompt(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(HEAD + "    prompts: ['    ', \"\\t\\n\"]\n")
    assert parse_suite(path).groups[0].prompts.prompts == ("    ", "\t\n")


def test_a_sweep_beyond_the_cap_is_refused_before_its_cases_are_built(tmp_path):
    k = list(range(1, 65))
    batch = list(range(1, 101))
    temperature = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    text = (
        HEAD + f"    draft: zoo:tiny-code-draft\n    k: {k}\n    batch_size: {batch}\n    temperature: {temperature}\n"
    )
    assert suite_error(tmp_path, text) == (
        f":4: cases[0]: the suite sweeps 65,000 cases, more than {MAX_CASES:,}: cases[0] (x): 65,000 cases "
        "(batch_size 100 x temperature 10 x k 64); sweep fewer values per entry (or split the suite)"
    )


def test_a_large_sweep_collects_with_a_warning_naming_its_size_and_sweeps(bench):
    k = list(range(1, 51))
    bench.suite(HEAD + f"    draft: zoo:tiny-code-draft\n    k: {k}\n    batch_size: {list(range(1, 22))}\n")
    result = bench.run("--specdec-suite", "suite", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*1071 tests collected*"])
    warning = (
        "SuiteSizeWarning: suite suite has 1,071 cases (a run takes long): cases[0] (x): 1,071 cases "
        "(batch_size 21 x k 50)"
    )
    assert any(line.endswith(warning) for line in result.outlines)


# --------------------------------------------------------------------------------------------- -k and -m
SELECTION = """\
defaults:
  prompts: [hello]
cases:
  - name: pair
    target: zoo:tiny-code-target
    draft: zoo:tiny-code-draft
    k: [1, 4, 16]
    temperature: [0, 0.8]
    batch_size: [1, 2]
    dtype: [fp32, bf16]
"""


def _is_sampled(case_id: str) -> bool:
    return ",t=" in case_id


@pytest.mark.parametrize(
    ("option", "selects"),
    [
        (("-k", "ar"), lambda i: "[ar," in i),
        (("-k", "not ar"), lambda i: "[ar," not in i),
        (("-k", "k4"), lambda i: "[k=4," in i),
        (("-k", "k16 or kauto"), lambda i: "[k=16," in i),
        (("-k", "greedy"), lambda i: not _is_sampled(i)),
        (("-k", "sampled and not ar"), lambda i: _is_sampled(i) and "[ar," not in i),
        (("-k", "bs2"), lambda i: ",bs=2" in i),
        (("-k", "bf16 and k4"), lambda i: ",bf16," in i and "[k=4," in i),
        (("-k", "fp32"), lambda i: ",fp32," in i),
        (("-k", "cpu and pair and lossless"), lambda i: "[ar," not in i),
        (("-m", "specdec(k=1)"), lambda i: "[k=1," in i),
        (("-m", "specdec(k='ar', bs=2)"), lambda i: "[ar," in i and ",bs=2" in i),
        (("-m", "specdec(sampled=False, dtype='bf16')"), lambda i: not _is_sampled(i) and ",bf16," in i),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else "",
)
def test_the_documented_words_select_exactly_their_cases(bench, option, selects):
    bench.suite(SELECTION)
    everything = bench.run("--specdec-suite", "suite", "--collect-only", "-q")
    all_ids = [line.split("::", 1)[1] for line in everything.outlines if line.startswith("bench_suites/suite.yaml::")]
    assert len(all_ids) == 32
    result = bench.run("--specdec-suite", "suite", "--collect-only", "-q", *option)
    ids = [line.split("::", 1)[1] for line in result.outlines if line.startswith("bench_suites/suite.yaml::")]
    expected = [case_id for case_id in all_ids if selects(case_id)]
    assert expected and ids == expected
