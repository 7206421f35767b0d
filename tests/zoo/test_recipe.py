"""The training recipe runs end to end on a CPU at toy sizes, in both stages, and writes a loadable pair."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from specdec.zoo.recipe.card import write_card
from specdec.zoo.recipe.train import LlamaShape, Recipe, run_recipe

TOY = Recipe(
    vocab_size=400,
    target=LlamaShape(hidden=32, layers=2, heads=2, intermediate=64),
    draft=LlamaShape(hidden=16, layers=1, heads=1, intermediate=32),
    max_positions=128,
    seq_len=32,
    batch_size=4,
    target_steps=6,
    draft_steps=6,
    warmup=2,
    greedy_rows=8,
    greedy_prompt_len=4,
    greedy_length=24,
    max_files=12,
)


def test_recipe_writes_a_loadable_pair_with_manifest_prompts_and_card(tmp_path):
    out = tmp_path / "pair"
    run_recipe(TOY, out, torch.device("cpu"), stage="target", command="target-command")
    record = run_recipe(TOY, out, torch.device("cpu"), stage="draft", command="draft-command")

    for name in ("target", "draft"):
        model = AutoModelForCausalLM.from_pretrained(out / name, dtype=torch.float32, local_files_only=True)
        assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(out / name))
    assert (out / "target" / "tokenizer.json").read_bytes() == (out / "draft" / "tokenizer.json").read_bytes()
    assert record["commands"] == {"target": "target-command", "draft": "draft-command"}
    assert record["target"]["steps"] == 6 and record["draft"]["steps"] == 6
    assert record["target"]["heldout_perplexity"] > 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["license"] == "PSF-2.0" and manifest["counts"]["heldout"] >= 1
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"])
    assert (out / "code-heldout.jsonl").read_text().strip()
    card = (out / "MODEL_CARD.md").read_text()
    assert manifest["manifest_sha256"] in card and "draft-command" in card


def test_card_renders_the_evaluation(tmp_path):
    out = tmp_path / "pair"
    run_recipe(TOY, out, torch.device("cpu"), stage="all", command="all-command")
    evaluation = {
        "command": "evaluate-command",
        "environment": {"device": "cpu", "python": "3", "torch": "2", "transformers": "5"},
        "prompts": 2,
        "max_new_tokens": 8,
        "cost": {"threads": 2, "repeats": 5, "target_ms": 2.0, "draft_ms": 0.5, "ratio": 4.0},
        "simulated": [{"k": 4, "agreement": 0.8, "acceptance_rate": 0.6, "tokens_per_target_forward": 3.0}],
        "engine": None,
        "notes": ["a later remark"],
    }
    (out / "evaluation.json").write_text(json.dumps(evaluation))
    card = write_card(out).read_text()
    assert "evaluate-command" in card and "| 4 | 0.8 | 0.6 | 3.0 |" in card
    assert "\nNote: a later remark\n" in card
