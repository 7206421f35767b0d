"""Steps that draft nothing (autoregressive decoding, and a speculative run's last step) commit one token per row with
a few launches and leave the end-of-sequence check to the next sync, which reads every such step's history column at
once. On an accelerator that sync comes every ``EOS_CHECK_EVERY`` steps; here the CPU is made to wait as long, so
the deferred read is the one tested: the tokens and the cuts at EOS must be those of reading every step."""

from __future__ import annotations

import pytest
from test_greedy_lossless import reference
from test_rowwise import PROMPTS
from tiny_models import loaded, make_model

import specdec.generation as generation_module
from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine

MAX_NEW = 40
GREEDY = GenerationConfig(max_new_tokens=MAX_NEW)
SAMPLED = GenerationConfig(max_new_tokens=MAX_NEW, temperature=0.8, top_p=0.95)


def run(engine, prompts, generation: GenerationConfig, deferred: bool, monkeypatch, speculation=None):
    monkeypatch.setattr(generation_module, "EOS_EVERY_STEP_DEVICES", () if deferred else ("cpu",))
    return engine.generate(prompts, generation, speculation)


@pytest.fixture(scope="module")
def target_with_eos():
    """A target whose EOS is a token row 1 really produces at its 21st new token (in its second window of 16
    steps), with each prompt's greedy output under that EOS."""
    target = make_model("llama", seed=11, layers=2)
    free = reference(target, PROMPTS[1], max_new=MAX_NEW)
    eos = free[20]
    target.generation_config.eos_token_id = eos
    target.config.eos_token_id = eos
    expected = [reference(target, prompt, max_new=MAX_NEW) for prompt in PROMPTS]
    assert expected[1][-1] == eos and len(expected[1]) <= 21
    return target, expected


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_deferred_reads_give_the_tokens_of_reading_every_step(family, monkeypatch):
    engine = SpeculativeEngine(loaded(make_model(family, seed=11, layers=2), family))
    for generation in (GREEDY, SAMPLED):
        for prompts in (PROMPTS[0], PROMPTS):  # one row, and a left-padded batch
            every = run(engine, prompts, generation, deferred=False, monkeypatch=monkeypatch)
            deferred = run(engine, prompts, generation, deferred=True, monkeypatch=monkeypatch)
            assert deferred.token_ids == every.token_ids
            assert deferred.metrics.target_forwards == every.metrics.target_forwards


def test_deferred_reads_cut_each_row_at_its_own_eos(target_with_eos, monkeypatch):
    target, expected = target_with_eos
    engine = SpeculativeEngine(loaded(target, "t"))
    for deferred in (False, True):
        result = run(engine, PROMPTS, GREEDY, deferred, monkeypatch)
        assert result.token_ids == expected
        assert result.metrics.new_tokens == sum(len(ids) for ids in expected)
    alone = run(engine, PROMPTS[1], GREEDY, True, monkeypatch)
    assert alone.token_ids[0] == expected[1]  # a batch of one stops at its EOS
    # It stops at the end of the window holding its EOS (the prefill, then two windows), not at max_new_tokens.
    assert alone.metrics.target_forwards == 1 + 2 * generation_module.EOS_CHECK_EVERY < MAX_NEW


def test_a_speculative_run_ending_in_a_one_token_step_is_exact(monkeypatch):
    target = make_model("llama", seed=11, layers=2)
    draft = make_model("llama", seed=12, layers=1)
    expected = reference(target, PROMPTS[0], max_new=MAX_NEW)
    engine = SpeculativeEngine(loaded(target, "t"), loaded(draft, "d"))
    one_token_steps = 0
    for k in (2, 3, 4, 5):  # some runs end with room for the target's token only: a step that drafts nothing
        result = run(engine, PROMPTS[0], GREEDY, True, monkeypatch, SpeculationConfig(k=k))
        assert result.token_ids[0] == expected
        one_token_steps += sum(step.drafted == 0 for step in result.steps)
    assert one_token_steps > 0


@pytest.mark.parametrize("k", [2, 4])
def test_a_lockstep_batch_cuts_each_row_at_its_own_eos(target_with_eos, k, monkeypatch):
    """A batch in lockstep (the drafter does not keep rows apart, as the feature-reading heads do not): every row
    keeps the batch's shortest accepted prefix, the committed window of each step is checked for EOS on the host
    when the step's sync reads it, and each row's output is cut at its own EOS."""
    target, expected = target_with_eos
    engine = SpeculativeEngine(loaded(target, "t"), loaded(make_model("llama", seed=12, layers=1), "d"))
    monkeypatch.setattr(engine.drafter, "per_row", False)
    result = run(engine, PROMPTS, GREEDY, True, monkeypatch, SpeculationConfig(k=k))
    assert result.token_ids == expected
    assert all(len(set(step.row_accepted)) == 1 for step in result.steps)  # lockstep: every row keeps the same
