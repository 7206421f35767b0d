"""`specdec generate --draft-method ...`: every drafting method from the command line, and its errors."""

from __future__ import annotations

import json

import pytest
from test_cli import run_cli

ZOO_TARGET = "zoo:tiny-code-target"
PROMPT = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n    def"


@pytest.mark.parametrize(
    "extra",
    [
        ("--draft-method", "ngram"),
        ("--draft-method", "suffix", "--draft-option", "min_match=1"),
        ("--draft-method", "layerskip", "--draft-option", "layers=3"),
        ("--draft", "zoo:tiny-code-draft", "--draft-method", "model"),
        ("--draft", "zoo:tiny-code-draft", "--draft-method", "model", "--draft-option", "branching=2"),
        ("--draft-method", "eagle", "--draft", "zoo:tiny-code-eagle"),
        ("--draft-method", "medusa", "--draft", "zoo:tiny-code-medusa", "--draft-option", "tree=chain"),
    ],
    ids=["ngram", "suffix", "layerskip", "model", "model-tree", "eagle", "medusa-chain"],
)
def test_each_method_runs_and_reports_acceptance_and_tokens_per_forward(capsys, extra):
    code, out, err = run_cli(
        capsys, "generate", "--target", ZOO_TARGET, "--prompt", PROMPT, "--k", "4", "--max-new-tokens", "32", "--json",
        *extra,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    assert metrics["draft_method"] == extra[extra.index("--draft-method") + 1]
    assert metrics["mean_tokens_per_forward"] >= 1.0
    assert metrics["drafted_tokens"] > 0 and metrics["acceptance_rate"] is not None
    assert (metrics["mean_tree_size"] is not None) == ("branching=2" in extra or "eagle" in extra)
    if "--draft" in extra and "model" not in extra:  # --draft names the heads
        assert extra[extra.index("--draft") + 1] in metrics["draft"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--draft-method", "hydra"), "unknown --draft-method 'hydra': expected one of model, ngram, suffix"),
        (("--draft-method", "ngram", "--draft-option", "n=2"), "unknown option 'n' for draft method 'ngram'"),
        (("--draft-method", "ngram", "--draft-option", "max_ngram"), "is not KEY=VALUE"),
        (("--draft-method", "ngram", "--draft", "zoo:tiny-code-draft"), "drafts without a model: remove --draft"),
        (("--draft-method", "model",), "--draft-method model needs --draft NAME"),
        (("--draft-method", "eagle", "--draft", "zoo:tiny-code-eagle", "--draft-option", "heads=x"), "give one"),
        (("--draft-option", "max_ngram=2",), "--draft-option does nothing here"),
        (("--draft-method", "layerskip", "--draft-option", "layers=12"), "layers=12 but 'zoo:tiny-code-target' has 12"),
    ],
)  # fmt: skip
def test_bad_methods_and_options_exit_2_with_one_line(capsys, extra, message):
    code, out, err = run_cli(capsys, "generate", "--target", ZOO_TARGET, "--prompt", "def f(", *extra)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
