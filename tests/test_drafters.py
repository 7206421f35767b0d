"""Every drafting method through the one factory: unit behaviour of the model-free drafters, layer-skip views, and
losslessness (greedy output equals the target's own, token for token, in float32) on six architectures."""

from __future__ import annotations

import pytest
import torch
from tiny_models import MORE_FAMILIES, loaded, make_model

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, make_drafter
from specdec.drafters import METHODS, parse_options
from specdec.drafters.layerskip import first_layers_model
from specdec.drafters.ngram import NgramOptions, lookup_continuations
from specdec.drafters.suffix import SuffixDrafter, SuffixIndex, SuffixOptions
from specdec.errors import ConfigError
from specdec.sequence import SequenceBatch

# ------------------------------------------------------------------------------------------------- ngram lookup


def _lookup(rows: list[list[int]], k: int, max_ngram: int = 3, min_ngram: int = 1) -> tuple[list, list]:
    batch = SequenceBatch.from_prompts(rows, 8, pad_id=0, device=torch.device("cpu"))
    options = NgramOptions(max_ngram=max_ngram, min_ngram=min_ngram)
    continuations, available = lookup_continuations(batch.tokens, batch.length, batch.pad_lengths, options, k)
    return [c[:a] for c, a in zip(continuations.tolist(), available.tolist(), strict=True)], available.tolist()


def test_ngram_proposes_what_followed_the_most_recent_longest_match():
    #            0  1  2  3  4  5  6  7  8  9
    sequence = [7, 8, 9, 5, 7, 8, 6, 4, 7, 8]
    proposed, _ = _lookup([sequence], k=3)
    assert proposed == [[6, 4, 7]]  # "7 8" last occurred at 4..5, followed by 6 4 7 (not the older 9 5 7)
    proposed, _ = _lookup([[1, 2, 3, 9, 9, 2, 3]], k=2)
    assert proposed == [[9, 9]]  # the 2-gram "2 3" beats the more recent 1-gram "3"


def test_ngram_without_a_match_proposes_nothing():
    proposed, available = _lookup([[1, 2, 3, 4, 5]], k=4)
    assert proposed == [[]] and available == [0]


def test_ngram_match_that_runs_into_the_end_continues_with_its_period():
    proposed, available = _lookup([[5, 6, 5]], k=4)  # "5" at 0 is followed by 6 5 (the end): period 2
    assert proposed == [[6, 5, 6, 5]] and available == [4]
    proposed, _ = _lookup([[3, 3, 3]], k=4)  # an overlapping match: "3 3" at 0..1 is followed by the last 3
    assert proposed == [[3, 3, 3, 3]]
    proposed, _ = _lookup([[1, 2, 3, 9, 1, 2, 3]], k=3)  # far enough back: plain copying, no wrap
    assert proposed == [[9, 1, 2]]


def test_ngram_prompt_shorter_than_the_ngram():
    proposed, available = _lookup([[4]], k=3, max_ngram=3)
    assert proposed == [[]] and available == [0]
    proposed, _ = _lookup([[4, 4]], k=3, max_ngram=3)
    assert proposed == [[4, 4, 4]]


def test_ngram_batch_rows_match_different_lengths_and_never_in_padding():
    rows = [[1, 2, 1, 2, 3, 1, 2], [4, 5, 4], [9, 8, 7, 9, 8]]  # rows 1 and 2 are left-padded
    proposed, available = _lookup(rows, k=4)
    assert proposed == [[3, 1, 2, 3], [5, 4, 5, 4], [7, 9, 8, 7]] and available == [4, 4, 4]
    padded = [[1, 2, 3, 4, 5, 6], [7, 0]]  # row 1 ends with the pad id (0) and is left-padded with four of them
    proposed, available = _lookup(padded, k=2)
    assert proposed[1] == [] and available[1] == 0  # the padding never matches


# ------------------------------------------------------------------------------------------------ suffix index


def test_suffix_index_finds_the_deepest_earlier_context():
    index = SuffixIndex(max_depth=8)
    tokens = [1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3]
    index.add(tokens, 0)
    node, depth = index.deepest(tokens)
    assert depth == 3  # "1 2 3" occurred twice before; "3 1 2 3"? the 5 / 4 before differ at depth 4
    assert node is not None and node.counts == {4: 1, 5: 1}


def test_suffix_drafter_extends_while_the_continuation_is_frequent():
    drafter = SuffixDrafter(SuffixOptions(max_depth=8, min_match=2, min_prob=0.6))
    text = [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2]
    batch = SequenceBatch.from_prompts([text], 8, 0, torch.device("cpu"))
    drafter.start(batch)
    proposal = drafter.propose(batch, 5, GenerationConfig(), None)
    assert proposal.tokens.tolist() == [[3, 4, 5, 6, 1]] and proposal.probs is None
    ambiguous = [7, 1, 2, 8, 7, 1, 2, 3, 7, 1, 2]  # after "7 1 2": 8 once, 3 once: 50% < 60%
    batch = SequenceBatch.from_prompts([ambiguous], 8, 0, torch.device("cpu"))
    drafter.start(batch)
    assert drafter.propose(batch, 5, GenerationConfig(), None).width == 0


def test_suffix_corpus_remembers_earlier_requests():
    drafter = SuffixDrafter(SuffixOptions(max_depth=8, min_match=2, corpus=True))
    first = SequenceBatch.from_prompts([[10, 11, 12, 13, 14]], 8, 0, torch.device("cpu"))
    drafter.start(first)
    second = SequenceBatch.from_prompts([[20, 10, 11]], 8, 0, torch.device("cpu"))
    drafter.start(second)  # the first request joins the corpus
    assert drafter.propose(second, 3, GenerationConfig(), None).tokens.tolist() == [[12, 13, 14]]
    alone = SuffixDrafter(SuffixOptions(max_depth=8, min_match=2))
    alone.start(first)
    alone.start(second)
    assert alone.propose(second, 3, GenerationConfig(), None).width == 0


# -------------------------------------------------------------------------------------------- layer-skip views


@pytest.mark.parametrize("family", MORE_FAMILIES)
def test_first_layers_view_equals_a_model_of_fewer_layers_and_leaves_the_target_alone(family):
    target = make_model(family, seed=3, layers=4)
    ids = torch.tensor([[5, 17, 99, 240, 31]])
    with torch.no_grad():
        full = target(ids).logits
        view = first_layers_model(target, 2)
        assert view.config.num_hidden_layers == 2 and target.config.num_hidden_layers == 4
        shared = {p.data_ptr() for p in target.parameters()}
        assert {p.data_ptr() for p in view.parameters()} <= shared  # no weight copied
        assert sum(p.numel() for p in view.parameters()) < sum(p.numel() for p in target.parameters())
        # the view computes the first two layers: cut the target's own layer list to check it
        path, layers = next((n, m) for n, m in target.named_modules() if isinstance(m, torch.nn.ModuleList))
        expected_model = make_model(family, seed=3, layers=2)
        expected_model.load_state_dict(
            {k: v for k, v in target.state_dict().items() if k in expected_model.state_dict()}
        )
        assert torch.allclose(view(ids).logits, expected_model(ids).logits, atol=1e-5)
        assert target(ids).logits.equal(full)  # the target is untouched
        assert len(layers) == 4, path


# ----------------------------------------------------------------------------------------------- the factory


def test_factory_validates_methods_and_options():
    assert set(METHODS) == {"model", "ngram", "suffix", "layerskip", "medusa", "eagle"}
    assert make_drafter("ngram", max_ngram=4).options.max_ngram == 4
    with pytest.raises(ConfigError, match="unknown draft method 'hydra': expected one of model, ngram"):
        make_drafter("hydra")
    with pytest.raises(ConfigError, match="tree must be dynamic or chain"):
        make_drafter("eagle", tree="beam")
    with pytest.raises(ConfigError, match="unknown option 'n' for draft method 'ngram': its options are max_ngram"):
        make_drafter("ngram", n=3)
    with pytest.raises(ConfigError, match="must be int"):
        make_drafter("ngram", max_ngram="4")
    with pytest.raises(ConfigError, match="min_ngram <= max_ngram"):
        make_drafter("ngram", max_ngram=2, min_ngram=3)
    with pytest.raises(ConfigError, match="needs a draft model"):
        make_drafter("model")
    assert parse_options("suffix", ["corpus=true", "min-prob=0.5", "max_depth=8"]) == {
        "corpus": True,
        "min_prob": 0.5,
        "max_depth": 8,
    }
    assert parse_options("layerskip", ["layers=none"]) == {"layers": None}
    with pytest.raises(ConfigError, match="'layers' of draft method 'layerskip' must be int or none, got 'x'"):
        parse_options("layerskip", ["layers=x"])
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        parse_options("ngram", ["max_ngram"])


def test_layerskip_needs_fewer_layers_than_the_target():
    target = loaded(make_model("llama", seed=1, layers=2), "t")
    with pytest.raises(ConfigError, match="layers=2 but 't' has 2 layers"):
        SpeculativeEngine(target, make_drafter("layerskip", layers=2))


# ------------------------------------------------------------------------------------------------ losslessness

MAX_NEW = 20
PROMPTS = [[5, 17, 99, 240, 31, 5, 17, 99], [250, 4, 4, 61, 9, 13, 200, 77, 120, 3, 45, 4, 61], [42, 42]]
DRAFTERS = ("model", "ngram", "suffix", "layerskip-1", "layerskip-half")


def reference(model, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False)
    return out[0, len(prompt) :].tolist()


def drafter_for(name: str, draft_model):
    if name == "model":
        return loaded(draft_model, "draft")
    if name.startswith("layerskip"):
        return make_drafter("layerskip", layers=1 if name.endswith("-1") else None)
    return make_drafter(name, **({"min_match": 1} if name == "suffix" else {}))


@pytest.fixture(scope="module", params=MORE_FAMILIES)
def family_target(request):
    family = request.param
    target = make_model(family, seed=11, layers=4)
    draft = make_model(family, seed=12, layers=1)
    return family, target, draft, [reference(target, p) for p in PROMPTS]


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_greedy_output_equals_the_target_with_every_drafter(family_target, drafter):
    family, target, draft, expected = family_target
    engine = SpeculativeEngine(loaded(target, family), drafter_for(drafter, draft))
    drafted = 0
    for k in range(1, 9):
        speculation = SpeculationConfig(k=k)
        for prompt, want in zip(PROMPTS, expected, strict=True):
            result = engine.generate(prompt, GenerationConfig(max_new_tokens=MAX_NEW), speculation)
            assert result.token_ids[0] == want, f"k={k} prompt={prompt}"
            drafted += result.metrics.drafted_tokens
        batch = engine.generate(PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW), speculation)
        assert batch.token_ids == expected, f"batch of 3, k={k}"
        assert batch.metrics.draft_method == drafter.split("-")[0]
    assert drafted > 0  # the drafter did propose: the equality above is not a run of plain steps


def test_a_step_that_drafts_nothing_costs_no_draft_forward():
    target = make_model("llama", seed=4, layers=2)
    engine = SpeculativeEngine(loaded(target, "t"), make_drafter("ngram", min_ngram=2, max_ngram=3))
    result = engine.generate([1, 2, 3, 4, 5, 6], GenerationConfig(max_new_tokens=1), SpeculationConfig(k=4))
    assert result.metrics.drafted_tokens == 0 and result.metrics.draft_forwards == 0
    layerskip = SpeculativeEngine(loaded(target, "t"), make_drafter("layerskip", layers=1))
    single = layerskip.generate([1, 2, 3], GenerationConfig(max_new_tokens=2), SpeculationConfig(k=4))
    assert [s.drafted for s in single.steps] == [0]  # the budget leaves no room to draft: no draft forward either
    assert single.metrics.draft_forwards == 0 and single.metrics.target_forwards == 2
