"""Greedy autoregressive decoding in chunks (``SPECDEC_AR_CHUNK=N``: one graph per N steps on a CUDA fast path): the
same tokens, forwards and end-of-sequence cuts as step by step. Run here on the CPU by allowing the CPU to chunk (the
code path is the one CUDA takes; the CUDA graphs themselves are tested in tests/test_fast_path.py on the device)."""

from __future__ import annotations

import pytest
from test_rowwise import PROMPTS
from tiny_models import loaded, make_model

import specdec.generation as generation_module
from specdec import GenerationConfig, SpeculativeEngine
from specdec.errors import ConfigError


def run(engine, prompts, max_new: int, chunked: bool, monkeypatch):
    monkeypatch.setattr(generation_module, "AR_CHUNK_DEVICES", ("cpu",))
    monkeypatch.setenv("SPECDEC_AR_CHUNK", "16" if chunked else "0")
    return engine.generate(prompts, GenerationConfig(max_new_tokens=max_new))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("max_new", [1, 16, 37])
def test_chunks_give_the_tokens_and_forwards_of_single_steps(family, max_new, monkeypatch):
    engine = SpeculativeEngine(loaded(make_model(family, seed=11, layers=2), family))
    assert engine.target.path != "generic"
    for prompts in (PROMPTS[0], PROMPTS):  # one row, and a left-padded batch
        steps = run(engine, prompts, max_new, chunked=False, monkeypatch=monkeypatch)
        chunks = run(engine, prompts, max_new, chunked=True, monkeypatch=monkeypatch)
        assert chunks.token_ids == steps.token_ids
        assert chunks.metrics.target_forwards == steps.metrics.target_forwards
        assert len(chunks.steps) == len(steps.steps) == max(0, max_new - 1)
        assert chunks.metrics.mean_tokens_per_forward == steps.metrics.mean_tokens_per_forward


def test_chunks_stop_at_the_end_of_sequence(monkeypatch):
    target = make_model("llama", seed=11, layers=2)
    engine = SpeculativeEngine(loaded(target, "t"))
    free = run(engine, PROMPTS, 40, chunked=False, monkeypatch=monkeypatch).token_ids
    eos = free[1][20]  # a token one row really produces, in its second chunk
    target.generation_config.eos_token_id = eos
    target.config.eos_token_id = eos
    engine = SpeculativeEngine(loaded(target, "t"))
    steps = run(engine, PROMPTS, 40, chunked=False, monkeypatch=monkeypatch)
    chunks = run(engine, PROMPTS, 40, chunked=True, monkeypatch=monkeypatch)
    assert chunks.token_ids == steps.token_ids
    assert chunks.token_ids[1][-1] == eos and len(chunks.token_ids[1]) <= 21


def test_a_chunk_size_that_is_not_a_number_is_refused_by_name(monkeypatch):
    engine = SpeculativeEngine(loaded(make_model("llama", seed=11, layers=2), "t"))
    monkeypatch.setenv("SPECDEC_AR_CHUNK", "sixteen")
    with pytest.raises(ConfigError, match="SPECDEC_AR_CHUNK='sixteen': expected a whole number"):
        engine.generate(PROMPTS[0], GenerationConfig(max_new_tokens=4))
