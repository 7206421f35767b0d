"""A draft model drafting ahead (``ModelDrafter.draft_ahead``): the next chain queued before the host reads the
verdict, from the last kept column on the device. Only ever on by itself on CUDA (unless ``SPECDEC_DRAFT_AHEAD=0``);
here it is turned on on the CPU's fast path, where the same code runs eagerly. The chains drafted ahead must be the
chains drafted in place: the same greedy output, the same accepted count at every step, and with the same seed the
same samples."""

from __future__ import annotations

import pytest
from ahead_spy import counting_ahead

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, load_model
from specdec.errors import ConfigError
from specdec.zoo.prompts import load_prompts

GREEDY = GenerationConfig(max_new_tokens=40, stop_at_eos=False)
SAMPLED = GenerationConfig(max_new_tokens=40, temperature=0.8, top_p=0.95, seed=7, stop_at_eos=False)


@pytest.fixture(scope="module")
def zoo_pair():
    target = load_model("zoo:tiny-code-target", device="cpu", dtype="float32")
    draft = load_model("zoo:tiny-code-draft", device="cpu", dtype="float32")
    return target, draft


def test_drafting_ahead_is_off_on_a_cpu_and_needs_a_fast_decoder(zoo_pair, monkeypatch):
    target, draft = zoo_pair
    monkeypatch.setenv("SPECDEC_DRAFT_AHEAD", "1")
    assert not SpeculativeEngine(target, draft).drafter.ahead  # type: ignore[union-attr]
    monkeypatch.setenv("SPECDEC_DRAFT_AHEAD", "yes")
    with pytest.raises(ConfigError, match="SPECDEC_DRAFT_AHEAD='yes'"):
        SpeculativeEngine(target, draft)
    monkeypatch.delenv("SPECDEC_DRAFT_AHEAD")
    generic = SpeculativeEngine(target, draft, "generic")
    answers = counting_ahead(generic)
    prompt = load_prompts()[0]
    assert generic.generate(prompt, GREEDY, SpeculationConfig(k=4)).metrics.drafted_tokens > 0
    assert answers and not any(answers)  # the generic decoder cannot roll back to a device length


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_chains_drafted_ahead_are_the_chains_drafted_in_place(zoo_pair, k):
    target, draft = zoo_pair
    plain = SpeculativeEngine(target, draft)
    ahead = SpeculativeEngine(target, draft)
    answers = counting_ahead(ahead)
    for prompt in load_prompts()[:4]:
        expected = plain.generate(prompt, GREEDY, SpeculationConfig(k=k))
        result = ahead.generate(prompt, GREEDY, SpeculationConfig(k=k))
        assert result.token_ids == expected.token_ids == SpeculativeEngine(target).generate(prompt, GREEDY).token_ids
        assert [s.accepted for s in result.steps] == [s.accepted for s in expected.steps]
        assert result.metrics.target_forwards == expected.metrics.target_forwards
    assert answers.count(True) > 10 and all(answers)


def test_sampled_chains_drafted_ahead_draw_the_same_samples(zoo_pair):
    """The noise of each chain is drawn with the same generator calls in the same order, and the draft's logits are
    the same up to a two-token forward's rounding: the same seed gives the same tokens and steps."""
    target, draft = zoo_pair
    plain = SpeculativeEngine(target, draft)
    ahead = SpeculativeEngine(target, draft)
    answers = counting_ahead(ahead)
    for prompt in load_prompts()[:4]:
        expected = plain.generate(prompt, SAMPLED, SpeculationConfig(k=4))
        result = ahead.generate(prompt, SAMPLED, SpeculationConfig(k=4))
        assert result.token_ids == expected.token_ids
        assert [s.accepted for s in result.steps] == [s.accepted for s in expected.steps]
    assert answers.count(True) > 10


def test_a_batch_keeps_each_row_s_acceptance_and_drafts_in_place(zoo_pair):
    """Rows of a batch keep their own accepted prefixes (their columns differ), so no chain is drafted ahead."""
    target, draft = zoo_pair
    engine = SpeculativeEngine(target, draft)
    answers = counting_ahead(engine)
    prompts = [load_prompts()[0], load_prompts()[1][:9]]
    alone = [SpeculativeEngine(target).generate(p, GREEDY).token_ids[0] for p in prompts]
    assert engine.generate(prompts, GREEDY, SpeculationConfig(k=3)).token_ids == alone
    assert answers == []


def test_the_last_steps_draft_in_place(zoo_pair):
    """Drafting ahead stops where the next step's budget could fall below K; the run still ends on its budget."""
    target, draft = zoo_pair
    engine = SpeculativeEngine(target, draft)
    answers = counting_ahead(engine)
    short = GenerationConfig(max_new_tokens=7, stop_at_eos=False)
    prompt = load_prompts()[2]
    result = engine.generate(prompt, short, SpeculationConfig(k=4))
    assert result.token_ids == SpeculativeEngine(target).generate(prompt, short).token_ids
    assert len(result.token_ids[0]) == 7
    assert len(answers) < len([s for s in result.steps if s.drafted > 0])  # not every drafted step went ahead
