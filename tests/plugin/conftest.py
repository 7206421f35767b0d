"""End-to-end tests of the pytest plugin: pytester runs pytest on suites of tiny random models saved to folders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import make_model, make_tokenizer, save

MACHINE_CLASS = "test-machine"
QUIET = ("-p", "no:randomly", "-p", "no:cacheprovider", "-rs")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A target, a draft equal to it (greedy acceptance 1.0), and an unrelated draft, sharing one tokenizer."""
    root = tmp_path_factory.mktemp("plugin-models")
    tokenizer = make_tokenizer()
    return {
        "target": save(make_model("llama", seed=0, layers=2), tokenizer, root / "target"),
        "same": save(make_model("llama", seed=0, layers=2), tokenizer, root / "same"),
        "unrelated": save(make_model("llama", seed=5, layers=1), tokenizer, root / "unrelated"),
    }


@dataclass
class Bench:
    """A pytester checkout with suites, models and baselines, and the ways to run pytest on it."""

    pytester: pytest.Pytester
    models: dict[str, Path]

    @property
    def path(self) -> Path:
        return self.pytester.path

    def suite(self, text: str, name: str = "suite") -> Path:
        """Write ``bench_suites/NAME.yaml``; ``{target}``, ``{same}``, ``{unrelated}`` become model folders."""
        folder = self.path / "bench_suites"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.yaml"
        path.write_text(text.format(**{k: str(v) for k, v in self.models.items()}))
        return path

    def run(self, *args: str) -> pytest.RunResult:
        return self.pytester.runpytest(*QUIET, *args)

    def baseline(self, suite: str = "suite") -> dict[str, Any]:
        return json.loads((self.path / "baselines" / suite / f"{MACHINE_CLASS}.json").read_text())


@pytest.fixture
def bench(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tiny_models, tmp_path) -> Iterator[Bench]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty Hugging Face cache
    monkeypatch.setenv("SPECDEC_MACHINE_CLASS", MACHINE_CLASS)
    yield Bench(pytester, tiny_models)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these tiny models gain nothing from two, and on a busy machine two threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
