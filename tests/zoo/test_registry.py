"""Zoo names: resolution, canonical knobs, and errors that list what exists; the runtime zoo apart from the recipe."""

from __future__ import annotations

import subprocess
import sys

import pytest

from specdec.errors import ModelLoadError
from specdec.zoo import ZOO_PREFIX, is_zoo_name, list_zoo, resolve_zoo


def test_trained_names_resolve_to_model_folders():
    for name in ("zoo:tiny-code-target", "zoo:tiny-code-draft"):
        entry = resolve_zoo(name)
        assert entry.kind == "trained"
        assert (entry.path / "config.json").is_file()
        assert (entry.path / "model.safetensors").is_file()
        assert (entry.path / "tokenizer.json").is_file()
        assert (entry.path / "tokenizer_config.json").is_file()


def test_synthetic_names_carry_the_knob():
    entry = resolve_zoo("zoo:synthetic/llama-3.1-8b@mix=0.30")
    assert entry.kind == "synthetic"
    assert entry.shape == "llama-3.1-8b" and entry.mix == 0.3
    assert entry.name == "synthetic/llama-3.1-8b@mix=0.3"
    assert entry.path.is_file()
    default = resolve_zoo("zoo:synthetic/gpt2")
    assert default.mix == 0.5 and default.name == "synthetic/gpt2@mix=0.5"


def test_is_zoo_name():
    assert is_zoo_name("zoo:tiny-code-target")
    assert not is_zoo_name("gpt2")
    assert not is_zoo_name("./zoo/model")


def test_list_zoo_covers_every_entry_and_each_resolves():
    names = {entry.name.split("@")[0] for entry in list_zoo()}
    for expected in (
        "tiny-code-target",
        "tiny-code-draft",
        "synthetic/gpt2",
        "synthetic/distilgpt2",
        "synthetic/llama-3.2-1b",
        "synthetic/llama-3.2-3b",
        "synthetic/llama-3.1-8b",
        "synthetic/llama-3-draft-116m",
        "synthetic/tiny-llama",
    ):
        assert expected in names
    for entry in list_zoo():
        assert resolve_zoo(ZOO_PREFIX + entry.name) == entry
        assert entry.description


@pytest.mark.parametrize("name", ["zoo:tiny-code", "zoo:synthetic/llama-9b", "zoo:", "zoo:synthetic/"])
def test_unknown_names_list_the_known_ones(name):
    with pytest.raises(ModelLoadError) as error:
        resolve_zoo(name)
    message = str(error.value)
    assert repr(name) in message
    assert "tiny-code-target" in message and "synthetic/llama-3.1-8b" in message


@pytest.mark.parametrize("knob", ["@mix=1", "@mix=-0.1", "@mix=abc", "@temperature=0.3", "@mix="])
def test_bad_knobs_are_refused(knob):
    with pytest.raises(ModelLoadError, match="mix"):
        resolve_zoo("zoo:synthetic/tiny-llama" + knob)


RUNTIME_USE = """
import sys
from specdec import load_model
from specdec.zoo import load_prompts
assert load_prompts()
load_model("zoo:tiny-code-draft", device="cpu", dtype="float32")
load_model("zoo:synthetic/tiny-gpt2", device="cpu", dtype="float32")
print(sorted(m for m in sys.modules if m.startswith("specdec.zoo.recipe")))
"""


def test_the_runtime_zoo_never_imports_the_recipe():
    """Loading trained and synthetic entries and reading the held-out prompts leave ``specdec.zoo.recipe`` unloaded."""
    done = subprocess.run([sys.executable, "-c", RUNTIME_USE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
