"""`specdec generate` on models saved to local folders, with and without a draft, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tiny_models import make_model

from specdec.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_json_with_a_draft(capsys, model_folders):
    code, out, _ = run_cli(
        capsys,
        "generate",
        "--target",
        str(model_folders["target"]),
        "--draft",
        str(model_folders["draft"]),
        "--prompt",
        "def parse_args(",
        "--max-new-tokens",
        "12",
        "--k",
        "3",
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    metrics = result["metrics"]
    assert len(result["token_ids"]) == metrics["new_tokens"] <= 12
    assert isinstance(result["text"], str)
    assert metrics["acceptance_rate"] == 1.0  # the draft folder holds the same weights
    assert metrics["mean_tokens_per_forward"] > 1.0
    for key in ("tokens_per_second", "target_forwards", "time_to_first_token_s", "draft_forwards"):
        assert key in metrics
    assert metrics["acceptance_by_position"] == [1.0] * len(metrics["drafted_by_position"])
    assert metrics["mean_accepted_length"] > 1.0 and 0 < metrics["itl_p50_s"] <= metrics["itl_p99_s"]


def test_generate_without_a_draft_is_autoregressive_and_equals_generate(capsys, model_folders, tokenizer):
    code, out, _ = run_cli(
        capsys,
        "generate",
        "--target",
        str(model_folders["target"]),
        "--prompt",
        "for index, value in",
        "--max-new-tokens",
        "10",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert result["metrics"]["acceptance_rate"] is None
    assert result["metrics"]["target_forwards"] == len(result["token_ids"])
    model = make_model("llama", seed=0, layers=2)  # the weights saved in the target folder
    ids = torch.tensor([tokenizer.encode("for index, value in")])
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    assert result["token_ids"] == want[0, ids.shape[1] :].tolist()


def test_generate_with_sampling_adaptive_k_and_a_lossy_policy(capsys, model_folders):
    code, out, _ = run_cli(
        capsys,
        "generate",
        "--target",
        str(model_folders["target"]),
        "--draft",
        str(model_folders["unrelated"]),
        "--prompt",
        "import os",
        "--max-new-tokens",
        "16",
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--top-p",
        "0.95",
        "--adaptive-k",
        "--policy",
        "lossy-topk",
        "--json",
        "--steps",
    )
    assert code == 0
    result = json.loads(out)
    assert result["metrics"]["adaptive_k"] is True and result["metrics"]["policy"] == "lossy-topk"
    assert len(result["steps"]) == result["metrics"]["steps"]


def test_human_readable_output_has_text_and_a_metrics_table(capsys, model_folders):
    code, out, _ = run_cli(
        capsys,
        "generate",
        "--target",
        str(model_folders["target"]),
        "--draft",
        str(model_folders["draft"]),
        "--prompt",
        "class Config:",
        "--max-new-tokens",
        "8",
    )
    assert code == 0
    assert "acceptance rate" in out and "tokens/s" in out
    assert "mean accepted length (tau)" in out and "inter-token latency p50 / p90 / p99 (ms)" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", ""], "--prompt is empty"),
        (["--prompt", "x", "--k", "0"], "k must be an integer >= 1"),
        (["--prompt", "x", "--max-new-tokens", "600"], "exceeds the context"),
        (["--prompt", "x", "--policy", "yolo"], "unknown acceptance policy 'yolo'"),
        (["--prompt", "x", "--device", "tpu"], "unknown device 'tpu'"),
        (
            ["--prompt", "x", "--device", "cuda" if not torch.cuda.is_available() else "mps"],
            "use --device cpu",
        ),
    ],
)
def test_bad_input_gets_a_clear_error_and_a_nonzero_exit(capsys, model_folders, extra, message):
    if "mps" in extra and torch.backends.mps.is_available():
        pytest.skip("this machine has both CUDA and MPS")
    code, out, err = run_cli(capsys, "generate", "--target", str(model_folders["target"]), *extra)
    assert code != 0
    assert message in err
    assert "Traceback" not in err and out == ""


def test_the_installed_command_reports_errors_without_a_traceback(tmp_path):
    missing = tmp_path / "no-such-model"
    process = subprocess.run(
        [sys.executable, "-m", "specdec", "generate", "--target", str(missing), "--prompt", "hi"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert process.returncode == 2
    assert "does not exist" in process.stderr and "Traceback" not in process.stderr
