"""The trained pair: loads through specdec's real loading code, shares one tokenizer, agrees as its card says."""

from __future__ import annotations

import json

import pytest
import torch

from specdec.loading import load_model
from specdec.zoo import HELDOUT_PROMPTS, load_prompts, resolve_zoo
from specdec.zoo.recipe.agreement import measure_acceptance, simulate_acceptance

ZOO_WEIGHT_BUDGET_BYTES = 25_000_000


@pytest.fixture(scope="module")
def pair():
    target = load_model("zoo:tiny-code-target", device="cpu", dtype="float32")
    draft = load_model("zoo:tiny-code-draft", device="cpu", dtype="float32")
    return target, draft


def test_pair_loads_through_the_real_loader(pair):
    target, draft = pair
    for loaded in pair:
        assert loaded.model.config.model_type == "llama"
        assert loaded.model.dtype == torch.float32
        assert not loaded.model.training
    target_params = sum(p.numel() for p in target.model.parameters())
    draft_params = sum(p.numel() for p in draft.model.parameters())
    assert target_params > 5 * draft_params


def test_pair_shares_one_tokenizer(pair):
    target, draft = pair
    for file in ("tokenizer.json", "tokenizer_config.json"):
        target_bytes = (resolve_zoo("zoo:tiny-code-target").path / file).read_bytes()
        assert target_bytes == (resolve_zoo("zoo:tiny-code-draft").path / file).read_bytes()
    assert target.tokenizer.get_vocab() == draft.tokenizer.get_vocab()
    assert target.model.config.vocab_size == draft.model.config.vocab_size == len(target.tokenizer)
    text = "def parse_args(argv=None):\n    return argv\n"
    ids = target.tokenizer(text)["input_ids"]
    assert ids == draft.tokenizer(text)["input_ids"]
    assert target.tokenizer.decode(ids) == text


def test_pair_agrees_on_held_out_prompts(pair):
    """A regression guard on the committed weights (the card's figures come from the evaluation command)."""
    target, draft = pair
    prompts = [target.tokenizer(text, return_tensors="pt").input_ids for text in load_prompts()[:4]]
    acceptance = measure_acceptance(target.model, draft.model, prompts, max_new_tokens=32, k=4)
    assert acceptance.agreement > 0.6


def test_heldout_prompts_come_from_heldout_files():
    rows = [json.loads(line) for line in HELDOUT_PROMPTS.read_text().splitlines()]
    manifest = json.loads((HELDOUT_PROMPTS.parent / "manifest.json").read_text())
    split = {entry["path"]: entry["split"] for entry in manifest["files"]}
    assert 16 <= len(rows) <= 32
    assert all(split[row["source"]] == "heldout" for row in rows)
    assert all(row["prompt"].lstrip().startswith(("def ", "async def ")) for row in rows)


def test_zoo_weights_fit_the_budget():
    folders = [resolve_zoo(name).path for name in ("zoo:tiny-code-target", "zoo:tiny-code-draft")]
    weights = sum(path.stat().st_size for folder in folders for path in folder.rglob("*.safetensors"))
    assert weights < ZOO_WEIGHT_BUDGET_BYTES  # the pair; the heads have their own budget (tests/test_zoo_heads.py)


@pytest.mark.parametrize(
    ("indicators", "k", "expected"),
    [
        ([True] * 8, 4, (7, 7, 2)),  # 4 accepted + the bonus, then the last 3 (the window shrinks at the end)
        ([False] * 3, 4, (0, 6, 3)),  # every round rejects its first token; the correction advances one
        ([True, True, False, True, True, True, True], 2, (5, 5, 3)),  # position 2 is a bonus token
        ([], 4, (0, 0, 0)),
    ],
)
def test_simulated_acceptance_by_hand(indicators, k, expected):
    assert simulate_acceptance(indicators, k) == expected
