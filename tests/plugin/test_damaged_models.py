"""A suite case whose model is damaged skips with the loader's one-line message instead of failing on a raw error."""

from __future__ import annotations

import shutil


def test_a_truncated_weights_file_skips_its_cases_with_the_loaders_message(bench):
    damaged = bench.path / "models" / "truncated"
    shutil.copytree(bench.models["target"], damaged)
    weights = damaged / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    bench.suite(
        f"""
defaults: {{{{rounds: 1, warmup_rounds: 0, max_new_tokens: 4, prompts: ["def parse_args("]}}}}
cases:
  - name: damaged
    target: {damaged}
    draft: {{same}}
    k: 2
  - name: sound
    target: {{target}}
    draft: {{same}}
    k: 2
"""
    )
    result = bench.run("--specdec-suite", "suite")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0
    assert outcomes["skipped"] == 2 and outcomes["passed"] == 2  # the damaged pair's two cases; the sound pair runs
    text = result.stdout.str()
    assert f"weights file '{weights}'" in text and "corrupt or truncated" in text and "re-save" in text
    assert "SafetensorError" not in text
