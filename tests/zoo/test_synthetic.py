"""Synthetic models: built with the real transformers classes through specdec's loader, deterministic, and with an
agreement that moves the way the knob says."""

from __future__ import annotations

import pytest
import torch

from specdec.loading import load_model
from specdec.zoo import build_synthetic, resolve_zoo
from specdec.zoo.recipe.agreement import measure_acceptance
from specdec.zoo.registry import FAMILIES
from specdec.zoo.synthetic import build_model


def test_synthetic_model_loads_through_the_real_loader():
    loaded = load_model("zoo:synthetic/tiny-llama@mix=0.3", device="cpu", dtype="float32")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    ids = loaded.tokenizer("def parse_args(", return_tensors="pt").input_ids
    assert int(ids.max()) < loaded.model.config.vocab_size
    logits = loaded.model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], loaded.model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_build_is_deterministic_and_dtype_is_respected():
    entry = resolve_zoo("zoo:synthetic/tiny-gpt2@mix=0.4")
    first, _ = build_synthetic(entry, torch.device("cpu"), torch.float32)
    second, _ = build_synthetic(entry, torch.device("cpu"), torch.float32)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    half, _ = build_synthetic(entry, torch.device("cpu"), torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_target_and_draft_built_apart_share_the_backbone():
    rank = FAMILIES["zoo"].backbone_rank
    target = build_model("tiny-llama", 0.5, torch.device("cpu"), torch.float32)
    draft = build_model("tiny-llama-draft", 0.5, torch.device("cpu"), torch.float32)
    target_embedding = target.get_input_embeddings().weight
    draft_embedding = draft.get_input_embeddings().weight
    assert torch.equal(target_embedding[:, :rank], draft_embedding[:, :rank])
    assert not target_embedding[:, rank:].any()


def test_mix_zero_gives_full_agreement():
    target = build_model("tiny-llama", 0.0, torch.device("cpu"), torch.float32)
    draft = build_model("tiny-llama-draft", 0.0, torch.device("cpu"), torch.float32)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 4096, (1, 12), generator=generator) for _ in range(2)]
    assert measure_acceptance(target, draft, prompts, 16, 4).agreement == 1.0


@pytest.mark.parametrize(
    ("target_shape", "draft_shape"), [("tiny-llama", "tiny-llama-draft"), ("tiny-gpt2", "tiny-llama-draft")]
)
def test_agreement_falls_as_mix_rises(target_shape, draft_shape):
    agreements = []
    for mix in (0.1, 0.5, 0.9):
        target = build_model(target_shape, mix, torch.device("cpu"), torch.float32)
        draft = build_model(draft_shape, mix, torch.device("cpu"), torch.float32)
        generator = torch.Generator().manual_seed(1)
        prompts = [torch.randint(1, 4096, (1, 12), generator=generator) for _ in range(12)]
        agreements.append(measure_acceptance(target, draft, prompts, 24, 4).agreement)
    assert agreements[0] > agreements[1] > agreements[2], agreements
    assert agreements[0] > 0.8 and agreements[2] < 0.3, agreements
