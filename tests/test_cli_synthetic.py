"""``specdec generate --policy synthetic``: the three acceptance flags, their one-line errors, and a report that
says the output is synthetic (not lossless)."""

from __future__ import annotations

import json

import pytest

from specdec.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def generate(capsys, model_folders, *args: str) -> tuple[int, str, str]:
    target, draft = str(model_folders["target"]), str(model_folders["draft"])
    return run_cli(capsys, "generate", "--target", target, "--draft", draft, "--prompt", "x", *args)


@pytest.mark.parametrize(
    ("flags", "parameter"),
    [
        (["--acceptance-rate", "0.8"], {"acceptance_rate": 0.8}),
        (["--acceptance-rates", "0.9,0.8,0.7,0.6"], {"acceptance_rates": [0.9, 0.8, 0.7, 0.6]}),
        (["--acceptance-length", "3.2"], {"acceptance_length": 3.2}),
    ],
)
def test_each_acceptance_flag_runs_and_the_json_says_synthetic(capsys, model_folders, flags, parameter):
    code, out, err = generate(
        capsys, model_folders, "--policy", "synthetic", *flags, "--max-new-tokens", "24", "--json"
    )
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    assert metrics["policy"] == "synthetic" and metrics["synthetic"] == parameter
    assert sum(metrics["accepted_by_position"]) == metrics["accepted_tokens"]
    assert "NOT lossless" in err  # said on standard error too, whatever the output format


def test_the_table_report_says_the_output_is_not_the_targets(capsys, model_folders):
    code, out, _ = generate(capsys, model_folders, "--policy", "synthetic", "--acceptance-rate", "0.5")
    assert code == 0
    assert "synthetic acceptance (acceptance_rate=0.5): NOT lossless" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--policy", "synthetic", "--acceptance-rate", "1.5"],
            "--acceptance-rate 1.5: acceptance_rate must be in (0, 1]",
        ),
        (["--policy", "synthetic", "--acceptance-rate", "0"], "acceptance_rate must be in (0, 1], got 0.0"),
        (["--policy", "synthetic", "--acceptance-rates", ""], "--acceptance-rates '' has an empty entry"),
        (["--policy", "synthetic", "--acceptance-rates", "0.9,,0.5"], "has an empty entry"),
        (["--policy", "synthetic", "--acceptance-rates", "0.9,x"], "expected comma-separated numbers"),
        (
            ["--policy", "synthetic", "--acceptance-rates", "0.9,0.8"],
            "acceptance_rates has 2 entries but K can reach 4",
        ),
        (["--policy", "synthetic", "--acceptance-rates", "0.5,0.9,0.4,0.2"], "acceptance_rates must not increase"),
        (["--policy", "synthetic", "--acceptance-length", "0.5"], "acceptance_length must be >= 1, got 0.5"),
        (["--policy", "synthetic", "--acceptance-length", "5.5", "--k", "4"], "must be in [1, K + 1] = [1, 5]"),
        (["--acceptance-rate", "0.8"], "--acceptance-rate does nothing here: it only applies with --policy synthetic"),
        (["--policy", "lossy-topk", "--acceptance-length", "2"], "--acceptance-length does nothing here"),
        (["--policy", "synthetic"], "--policy synthetic needs the acceptance to force: one of --acceptance-rate"),
        (
            ["--policy", "synthetic", "--acceptance-rate", "0.8", "--acceptance-length", "2"],
            "--acceptance-rate and --acceptance-length: give only one of",
        ),
    ],
)
def test_bad_synthetic_flags_fail_in_one_line(capsys, model_folders, flags, message):
    code, out, err = generate(capsys, model_folders, *flags)
    assert code == 2 and out == ""
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_synthetic_flags_without_a_draft_say_nothing_is_drafted(capsys, model_folders):
    code, _, err = run_cli(
        capsys, "generate", "--target", str(model_folders["target"]), "--prompt", "x", "--acceptance-rate", "0.8"
    )
    assert code == 2 and "--acceptance-rate does nothing here: without --draft" in err
