from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_model, make_tokenizer, save


@pytest.fixture(autouse=True, scope="session")
def _offline_and_deterministic() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Tiny target and drafts saved as Hugging Face folders (what `from_pretrained` reads)."""
    root = tmp_path_factory.mktemp("models")
    return {
        "target": save(make_model("llama", seed=0, layers=2), tokenizer, root / "target"),
        "draft": save(make_model("llama", seed=0, layers=2), tokenizer, root / "draft-same"),
        "unrelated": save(make_model("gpt2", seed=7, layers=1), tokenizer, root / "draft-unrelated"),
    }
