"""The Python API's prompts: ids must be integers in a 1-D or 2-D shape, any non-empty text is a prompt, and a
batch's result has no single `.text`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import loaded, make_model, make_tokenizer

from specdec import GenerationConfig, SpeculativeEngine
from specdec.errors import ConfigError

SHORT = GenerationConfig(max_new_tokens=3, stop_at_eos=False)


@pytest.fixture(scope="module")
def engine() -> SpeculativeEngine:
    return SpeculativeEngine(loaded(make_model("llama", seed=0, layers=1), "target", make_tokenizer()))


@pytest.mark.parametrize(
    "prompt",
    [[1.7, 2.2], [5, 6.0], [[5, 6], [7, 8.5]], torch.tensor([5.0, 6.0]), torch.tensor([[True, False]])],
    ids=["floats", "one-float", "float-in-a-row", "float-tensor", "bool-tensor"],
)
def test_ids_that_are_not_integers_are_refused_never_truncated(engine, prompt):
    with pytest.raises(ConfigError, match=r"integer"):
        engine.generate(prompt, SHORT)


def test_a_3d_tensor_is_refused_with_its_shape(engine):
    with pytest.raises(ConfigError, match=r"\[P\] or \[B, P\], got shape \[1, 2, 3\]"):
        engine.generate(torch.ones(1, 2, 3, dtype=torch.long), SHORT)


def test_integer_ids_of_every_kind_give_the_same_output(engine):
    want = engine.generate([5, 6, 7], SHORT).token_ids
    assert engine.generate(torch.tensor([5, 6, 7]), SHORT).token_ids == want
    assert engine.generate(torch.tensor([[5, 6, 7]], dtype=torch.int32), SHORT).token_ids == want
    assert engine.generate(np.array([5, 6, 7]).tolist(), SHORT).token_ids == want
    assert engine.generate(list(np.array([5, 6, 7])), SHORT).token_ids == want  # NumPy integers
    assert engine.generate([[5, 6, 7]], SHORT).token_ids == want


@pytest.mark.parametrize("prompt", ["    ", "\n", "\t\t"])
def test_a_whitespace_prompt_is_a_prompt(engine, prompt):
    result = engine.generate(prompt, SHORT)
    assert result.metrics.prompt_tokens >= 1 and len(result.token_ids[0]) == 3


def test_an_empty_prompt_is_still_refused(engine):
    with pytest.raises(ConfigError, match="the prompt is empty"):
        engine.generate("", SHORT)


def test_text_of_a_batch_is_refused_and_points_to_texts(engine):
    batch = engine.generate(["def f(", "import os"], SHORT)
    assert len(batch.texts) == 2
    with pytest.raises(ValueError, match=r"2 rows.*use \.texts"):
        _ = batch.text
    single = engine.generate("def f(", SHORT)
    assert single.text == single.texts[0]
