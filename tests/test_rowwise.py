"""Per-row acceptance: every row of a batch keeps its own accepted prefix and bonus token each step, so each row's
greedy output, and the steps it takes, are those of its own batch-of-one run (docs/batching.md)."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import loaded, make_model

import specdec.generation as generation_module
from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, make_drafter
from specdec.loading import load_model
from specdec.metrics import PositionCounts
from specdec.sequence import SequenceBatch
from specdec.verification import greedy_verify, speculative_sample_from_noise

PROMPTS = [
    [5, 17, 99, 240, 31, 5, 17, 99],
    [250, 4, 4, 61, 9, 13, 200, 77, 120, 3, 45, 4, 61],
    [42, 42],
    [7, 8, 9, 10, 7, 8, 9],
]
MAX_NEW = 32
DRAFTERS = ("model", "ngram", "suffix", "layerskip")


def perturbed(model, scale: float, seed: int):
    """A noisy copy of ``model``: it agrees with the model often, not always (rows then accept different counts)."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in draft.parameters():
            weight.add_(scale * torch.randn(weight.shape, generator=generator))
    return draft


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def models(request):
    family = request.param
    target = make_model(family, seed=11, layers=4)
    return family, target, perturbed(target, 0.02, seed=12)


def drafter_for(name: str, draft_model):
    if name == "model":
        return loaded(draft_model, "draft")
    if name == "layerskip":
        return make_drafter("layerskip", layers=2)
    return make_drafter(name, **({"min_match": 1} if name == "suffix" else {}))


def batch_and_singles(engine, prompts, generation, speculation):
    singles = [engine.generate(prompt, generation, speculation) for prompt in prompts]
    return engine.generate(prompts, generation, speculation), singles


def assert_rows_are_their_own_runs(batch, singles) -> None:
    """Outputs equal, and no accepted token was thrown away: the batch took the steps of its longest row's run, and
    each row drafted and kept, position by position, what its own run did."""
    assert batch.token_ids == [single.token_ids[0] for single in singles]
    assert batch.metrics.target_forwards == max(single.metrics.target_forwards for single in singles)
    assert batch.metrics.accepted_tokens == sum(single.metrics.accepted_tokens for single in singles)
    assert batch.metrics.drafted_tokens == sum(single.metrics.drafted_tokens for single in singles)
    total = sum((single.metrics.position_counts for single in singles), PositionCounts())
    assert batch.metrics.position_counts == total


@pytest.mark.parametrize("decoder", ["generic", "fast"])
@pytest.mark.parametrize("drafter", DRAFTERS)
def test_each_row_is_its_own_batch_of_one(models, decoder, drafter):
    family, target, draft = models
    engine = SpeculativeEngine(loaded(target, family), drafter_for(drafter, draft), decoder=decoder)
    uneven = 0
    for k in (2, 5):
        batch, singles = batch_and_singles(
            engine, PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW), SpeculationConfig(k=k)
        )
        assert_rows_are_their_own_runs(batch, singles)
        uneven += sum(len(set(step.row_accepted)) > 1 for step in batch.steps)
    if family == "gpt2" or drafter in ("model", "layerskip"):  # the tiny Llama never repeats itself: no lookups
        assert uneven > 0  # in some steps rows kept different counts: the batch had holes


def test_rows_keep_more_than_lockstep_would():
    """The test above fails on lockstep batching: there the batch takes more forwards than its longest row alone."""
    target = make_model("llama", seed=11, layers=4)
    engine = SpeculativeEngine(loaded(target, "t"), make_drafter("layerskip", layers=2))
    batch, singles = batch_and_singles(
        engine, PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW), SpeculationConfig(k=4)
    )
    assert batch.metrics.target_forwards == max(single.metrics.target_forwards for single in singles)
    new_tokens = sum(len(single.token_ids[0]) for single in singles)
    assert batch.metrics.mean_tokens_per_forward == pytest.approx(
        new_tokens / len(PROMPTS) / batch.metrics.target_forwards
    )
    assert batch.metrics.mean_accepted_length == pytest.approx(
        (batch.metrics.accepted_tokens + sum(step.rows for step in batch.steps))
        / sum(step.rows for step in batch.steps)
    )
    assert [step.rows for step in batch.steps] == sorted((step.rows for step in batch.steps), reverse=True)


@pytest.mark.parametrize("decoder", ["generic", "fast"])
def test_compaction_keeps_every_row_exact(models, decoder, monkeypatch):
    """No room for holes: the columns are compacted often, in the target's cache and the draft model's."""
    monkeypatch.setattr(generation_module, "HOLE_ROOM", 0.0)
    family, target, draft = models
    engine = SpeculativeEngine(loaded(target, family), loaded(draft, "draft"), decoder=decoder)
    generation, speculation = GenerationConfig(max_new_tokens=MAX_NEW), SpeculationConfig(k=4)
    with engine.start(PROMPTS, generation, speculation) as run:
        while not run.done:
            run.step()
        batch = run.result()
        assert run.compactions > 0
    assert_rows_are_their_own_runs(batch, [engine.generate(p, generation, speculation) for p in PROMPTS])


@pytest.mark.parametrize("drafter", ["model", "ngram"])
def test_rows_that_end_early_stop_and_leave_the_others_exact(drafter):
    target = make_model("llama", seed=11, layers=4)
    draft = perturbed(target, 0.02, seed=12)
    engine = SpeculativeEngine(loaded(target, "t"), drafter_for(drafter, draft))
    free = engine.generate(PROMPTS[1], GenerationConfig(max_new_tokens=MAX_NEW)).token_ids[0]
    eos = free[6]  # a token the target really produces, early in one row
    target.generation_config.eos_token_id = eos
    target.config.eos_token_id = eos
    engine = SpeculativeEngine(loaded(target, "t"), drafter_for(drafter, draft))
    batch, singles = batch_and_singles(
        engine, PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW), SpeculationConfig(k=3)
    )
    assert batch.token_ids == [single.token_ids[0] for single in singles]
    assert batch.token_ids[1][-1] == eos and len(batch.token_ids[1]) < MAX_NEW
    assert batch.metrics.target_forwards == max(single.metrics.target_forwards for single in singles)


def test_different_budgets_per_row_near_the_end():
    """Rows reach max_new_tokens at different steps; a row near its end keeps no draft past its budget."""
    target = make_model("llama", seed=11, layers=4)
    engine = SpeculativeEngine(loaded(target, "t"), loaded(perturbed(target, 0.02, seed=12), "d"))
    for max_new in (1, 2, 5):
        batch, singles = batch_and_singles(
            engine, PROMPTS, GenerationConfig(max_new_tokens=max_new), SpeculationConfig(k=6)
        )
        assert_rows_are_their_own_runs(batch, singles)
        assert all(len(ids) == max_new for ids in batch.token_ids)


def test_streaming_a_batch_gives_each_rows_tokens():
    target = make_model("llama", seed=11, layers=4)
    engine = SpeculativeEngine(loaded(target, "t"), loaded(perturbed(target, 0.02, seed=12), "d"))
    generation, speculation = GenerationConfig(max_new_tokens=MAX_NEW), SpeculationConfig(k=4)
    streamed: list[list[int]] = [[] for _ in PROMPTS]
    for chunk in engine.stream(PROMPTS, generation, speculation):
        for row, tokens in zip(streamed, chunk, strict=True):
            row.extend(tokens)
    assert streamed == engine.generate(PROMPTS, generation, speculation).token_ids


def test_sampled_batches_are_repeatable_and_rows_differ():
    target = make_model("llama", seed=11, layers=4)
    engine = SpeculativeEngine(loaded(target, "t"), loaded(perturbed(target, 0.02, seed=12), "d"))
    config = GenerationConfig(max_new_tokens=MAX_NEW, temperature=1.0, seed=3, stop_at_eos=False)
    first = engine.generate([PROMPTS[0]] * 3, config, SpeculationConfig(k=3))
    assert engine.generate([PROMPTS[0]] * 3, config, SpeculationConfig(k=3)).token_ids == first.token_ids
    assert all(len(ids) == MAX_NEW for ids in first.token_ids)
    assert len({tuple(ids) for ids in first.token_ids}) > 1


def test_a_row_samples_the_target_distribution_beside_rows_that_keep_other_counts():
    """Rejection sampling per row stays lossless: rows 0 and 2 (one prompt) sample the target's exact distribution
    while rows of other prompts and lengths keep other counts beside them (holes, shifted positions)."""
    from test_sampling_lossless import ALPHA, VOCAB, chi_square_pvalue, exact_target_distributions, make_tiny_pair

    target, draft = make_tiny_pair()
    prompt, config = [3, 1, 4], GenerationConfig(temperature=1.0, seed=4)
    joint, marginal3 = exact_target_distributions(target, prompt, config)
    engine = SpeculativeEngine(loaded(target, "t"), loaded(draft, "d"))
    rows, uneven = [], 0
    for call in range(750):
        seeded = GenerationConfig(max_new_tokens=4, temperature=1.0, seed=400_000 + call, stop_at_eos=False)
        result = engine.generate([prompt, [5, 2, 6, 7, 1, 0, 2], prompt, [6]], seeded, SpeculationConfig(k=2))
        rows += [result.token_ids[0][:3], result.token_ids[2][:3]]
        uneven += any(len(set(step.row_accepted)) > 1 for step in result.steps)
    tokens = torch.tensor(rows)
    assert uneven > 100
    assert chi_square_pvalue(tokens[:, 0] * VOCAB + tokens[:, 1], joint) > ALPHA
    assert chi_square_pvalue(tokens[:, 2], marginal3) > ALPHA


def test_the_trained_zoo_pair_rows_equal_their_own_runs():
    target = load_model("zoo:tiny-code-target", device="cpu", dtype="float32")
    draft = load_model("zoo:tiny-code-draft", device="cpu", dtype="float32")
    prompts = ["def parse_args(argv):\n", "for index, value in enumerate(", "import os\n", "class Config:\n    def"]
    for decoder in ("generic", "fast"):
        engine = SpeculativeEngine(target, draft, decoder=decoder)
        rows = engine.encode(prompts)
        batch, singles = batch_and_singles(engine, rows, GenerationConfig(max_new_tokens=48), SpeculationConfig(k=4))
        assert_rows_are_their_own_runs(batch, singles)


# ------------------------------------------------------------------------------------------------- the pieces
def test_per_row_verification_keeps_each_rows_prefix_up_to_its_limit():
    drafts = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 9, 3]])
    choice = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])  # the target's argmax after each token
    logits = torch.nn.functional.one_hot(choice, 10).float()
    verdict = greedy_verify(drafts, logits, limits=torch.tensor([3, 1, 3]))
    assert verdict.row_kept.tolist() == [3, 1, 1]
    assert verdict.next_tokens.tolist() == [4, 2, 2]  # the bonus; row 1's accepted draft at its limit; a recovery
    assert int(verdict.num_accepted) == 3
    lockstep = greedy_verify(drafts, logits)
    assert lockstep.row_kept.tolist() == [1, 1, 1] and lockstep.kept is None


def test_per_row_sampling_keeps_each_rows_accepted_prefix():
    vocab = 5
    drafts = torch.tensor([[0, 1], [0, 1]])
    probs = torch.full((2, 3, vocab), 1.0 / vocab)
    draft_probs = torch.full((2, 2, vocab), 1.0 / vocab)
    uniforms = torch.tensor([[0.5, 0.5], [0.5, 0.5]])  # p == q: every draft is accepted
    exponentials = torch.ones(2, vocab)
    verdict = speculative_sample_from_noise(drafts, draft_probs, probs, uniforms, exponentials, torch.tensor([2, 1]))
    assert verdict.row_kept.tolist() == [2, 1]
    assert int(verdict.next_tokens[1]) == 1  # the accepted draft at row 1's limit


def test_holes_hide_columns_and_shift_positions_and_compaction_packs_them():
    batch = SequenceBatch.from_prompts(
        [[3, 4, 5], [6]], max_new_tokens=6, pad_id=0, device=torch.device("cpu"), columns=14
    )
    batch.length = 4  # the prompt and a first token
    batch.hide(4, kept=torch.tensor([3, 1]), shared=3, active=torch.tensor([True, True]))  # row 1 rejected 2 drafts
    assert batch.key_valid[1, :8].tolist() == [False, False, True, True, True, False, False, True]
    assert batch.positions[0, 7].item() == 7 and batch.positions[1, 7].item() == 3
    assert batch.positions[1, 8].item() == 4  # the next column continues row 1's own positions
    batch.length = 8
    batch.tokens[:, :8] = torch.tensor([[3, 4, 5, 10, 11, 12, 13, 14], [0, 0, 6, 20, 21, 98, 99, 22]])
    source = batch.compact(keep=8)  # the longest row has 8 tokens: nothing moves for it
    assert source[0].tolist() == list(range(8))
    assert source[1].tolist() == [-1, -1, -1, -1, 2, 3, 4, 7]
    assert batch.tokens[1, 4:8].tolist() == [6, 20, 21, 22]
    assert batch.key_valid[1, :8].tolist() == [False] * 4 + [True] * 4
    assert batch.positions[1, 4:9].tolist() == [0, 1, 2, 3, 4]
