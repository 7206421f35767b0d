"""`specdec generate` on awkward but legal input, and flags that would do nothing: exit 2 with one line naming them."""

from __future__ import annotations

import io
import json
import shutil

import pytest

from specdec.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def generate_json(capsys, target, *args: str) -> dict:
    code, out, err = run_cli(capsys, "generate", "--target", str(target), "--max-new-tokens", "6", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_prompt_dash_reads_standard_input(capsys, monkeypatch, model_folders):
    prompt = "def parse_args(argv):\n    "
    monkeypatch.setattr("sys.stdin", io.StringIO(prompt))
    from_stdin = generate_json(capsys, model_folders["target"], "--prompt", "-")
    given = generate_json(capsys, model_folders["target"], "--prompt", prompt)
    assert from_stdin["token_ids"] == given["token_ids"]
    assert from_stdin["metrics"]["prompt_tokens"] == given["metrics"]["prompt_tokens"] > 1


def test_prompt_dash_with_empty_standard_input_is_refused(capsys, monkeypatch, model_folders):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, err = run_cli(capsys, "generate", "--target", str(model_folders["target"]), "--prompt", "-")
    assert code == 2 and out == ""
    assert "--prompt - read nothing from standard input" in err and "Traceback" not in err


def test_a_whitespace_prompt_is_a_prompt(capsys, model_folders):
    result = generate_json(capsys, model_folders["target"], "--prompt", "    ")
    assert result["metrics"]["prompt_tokens"] >= 1 and len(result["token_ids"]) == 6


def test_an_empty_prompt_is_still_refused(capsys, model_folders):
    code, _, err = run_cli(capsys, "generate", "--target", str(model_folders["target"]), "--prompt", "")
    assert code == 2 and "--prompt is empty" in err


def test_a_tiny_temperature_runs_and_equals_greedy(capsys, model_folders):
    both = ("--prompt", "import os", "--draft", str(model_folders["unrelated"]), "--k", "3")
    greedy = generate_json(capsys, model_folders["target"], *both)
    cold = generate_json(capsys, model_folders["target"], *both, "--temperature", "1e-40")
    assert cold["token_ids"] == greedy["token_ids"]


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_temperature_that_is_not_finite_is_refused(capsys, model_folders, value):
    code, _, err = run_cli(
        capsys, "generate", "--target", str(model_folders["target"]), "--prompt", "x", "--temperature", value
    )
    assert code == 2 and f"temperature must be a finite number >= 0, got {value}" in err


DRAFT = "{draft}"


@pytest.mark.parametrize(
    ("extra", "flag", "why"),
    [
        (["--k", "3"], "--k", "without --draft"),
        (["--adaptive-k"], "--adaptive-k", "without --draft"),
        (["--policy", "lossy-topk"], "--policy", "without --draft"),
        (["--draft", DRAFT, "--threshold", "0.5"], "--threshold", "only applies with --policy lossy-threshold"),
        (
            ["--draft", DRAFT, "--policy", "lossy-topk", "--threshold", "0.5"],
            "--threshold",
            "only applies with --policy lossy-threshold",
        ),
        (
            ["--draft", DRAFT, "--policy", "lossy-threshold", "--topk-agreement", "5"],
            "--topk-agreement",
            "only applies with --policy lossy-topk",
        ),
        (["--draft", DRAFT, "--max-k", "6"], "--max-k", "only applies with --adaptive-k"),
        (["--draft", DRAFT, "--target-acceptance", "0.5"], "--target-acceptance", "only applies with --adaptive-k"),
        (["--min-k", "2"], "--min-k", "without --draft"),
        (["--top-k", "5"], "--top-k", "temperature 0 is greedy decoding"),
        (["--draft", DRAFT, "--top-p", "0.9"], "--top-p", "temperature 0 is greedy decoding"),
        (["--steps"], "--steps", "only applies with --json"),
    ],
)
def test_a_flag_that_would_do_nothing_is_named(capsys, model_folders, extra, flag, why):
    extra = [str(model_folders["draft"]) if a == DRAFT else a for a in extra]
    code, out, err = run_cli(capsys, "generate", "--target", str(model_folders["target"]), "--prompt", "x", *extra)
    assert code == 2 and out == ""
    assert f"{flag} does nothing here: " in err and why in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_flags_in_their_combination_are_accepted(capsys, model_folders):
    result = generate_json(
        capsys,
        model_folders["target"],
        "--prompt",
        "x",
        "--draft",
        str(model_folders["draft"]),
        "--adaptive-k",
        "--max-k",
        "6",
        "--policy",
        "lossy-threshold",
        "--threshold",
        "0.2",
        "--temperature",
        "0.7",
        "--top-p",
        "0.9",
        "--seed",
        "4",
        "--steps",
    )
    assert result["metrics"]["policy"] == "lossy-threshold" and result["metrics"]["adaptive_k"] is True
    assert "steps" in result


def test_a_file_as_target_says_a_model_folder_is_expected(capsys, model_folders):
    config = model_folders["target"] / "config.json"
    code, _, err = run_cli(capsys, "generate", "--target", str(config), "--prompt", "x")
    assert code == 2
    assert "is a file, not a folder" in err and "config.json" in err and "does not exist" not in err


def test_a_folder_without_a_tokenizer_names_the_missing_files(capsys, model_folders, tmp_path):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(model_folders["target"] / name, folder / name)
    code, _, err = run_cli(capsys, "generate", "--target", str(folder), "--prompt", "x")
    assert code == 2 and "Traceback" not in err
    assert "sentencepiece" not in err
    assert "has no tokenizer" in err and "tokenizer.json" in err and "tokenizer_config.json" in err
    assert "token ids" in err


def test_a_truncated_weights_file_is_a_one_line_error(capsys, model_folders, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(model_folders["target"], folder)
    weights = folder / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    code, _, err = run_cli(capsys, "generate", "--target", str(folder), "--prompt", "x")
    assert code == 2 and err.count("\n") == 1
    assert str(weights) in err and "corrupt or truncated" in err and "Traceback" not in err
