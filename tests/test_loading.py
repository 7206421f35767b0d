"""Loading from local folders, and the errors that name the model and say how to get it."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_model, make_tokenizer, save

from specdec import SpeculativeEngine, load_model
from specdec.errors import IncompatibleModelsError, ModelLoadError


def test_a_local_folder_loads_through_from_pretrained(model_folders):
    target = load_model(str(model_folders["target"]), device="cpu", dtype="auto")
    assert target.source == "local"
    assert target.dtype == torch.float32 and target.device.type == "cpu"
    assert not target.model.training
    assert target.tokenizer.decode(target.tokenizer.encode("def parse_args(")) == "def parse_args("


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope" / "model"), device="cpu")


def test_a_folder_without_config_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_model(str(tmp_path), device="cpu")


def test_a_hub_model_missing_offline_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelLoadError) as error:
        load_model("some-org/not-a-cached-model", device="cpu")
    message = str(error.value)
    assert "'some-org/not-a-cached-model'" in message
    assert "HF_HUB_OFFLINE" in message and "hf download" in message and "zoo" in message


def test_different_vocabularies_are_refused_before_generation(model_folders, tmp_path):
    other_tokenizer = make_tokenizer(vocab=300)
    other = save(make_model("llama", seed=3, vocab=300), other_tokenizer, tmp_path / "other-vocab")
    target = load_model(str(model_folders["target"]), device="cpu")
    draft = load_model(str(other), device="cpu")
    with pytest.raises(IncompatibleModelsError, match="different vocabularies"):
        SpeculativeEngine(target, draft)
