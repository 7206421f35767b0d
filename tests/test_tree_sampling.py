"""Tree sampling is lossless: the first tokens emitted follow the target's joint distribution, whatever the drafts.

A tiny language over a vocabulary of 5: the target's and the draft's next-token distributions depend on the tokens
emitted so far (tables up to three tokens deep). Each trial generates from an empty context with token trees until
two tokens are out, and the pairs are compared with the target's joint distribution by a chi-square test, for
trees sampled with replacement, without replacement and deterministically. A plausible bug (the residual omitted
after a rejected sibling) must fail the same test.
"""

from __future__ import annotations

import pytest
import torch
from test_sampling_lossless import ALPHA, chi_square_pvalue, exact_target_distributions, make_tiny_pair
from test_sampling_lossless import VOCAB as ENGINE_VOCAB
from tiny_models import loaded

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, make_drafter, verification
from specdec.tree import path_of

VOCAB = 5
PARENTS = [-1, -1, 0, 0, 1, 2]  # two children of the root, two below the first, one chain three deep
TRIALS = 6000


def _tables(seed: int) -> list[torch.Tensor]:
    """Next-token distributions by context: [V], [V, V], [V, V, V], [V, V, V, V] (the last for any deeper context)."""
    torch.manual_seed(seed)
    dirichlet = torch.distributions.Dirichlet(torch.full((VOCAB,), 0.8))
    return [dirichlet.sample(tuple([VOCAB] * depth)) for depth in range(4)]


TARGET, DRAFT = _tables(0), _tables(1)


def _at(tables: list[torch.Tensor], context: list[int]) -> torch.Tensor:
    depth = min(len(context), 3)
    table = tables[depth]
    for token in context[-depth:] if depth else []:
        table = table[token]
    return table


def _draft_tree(context: list[int], mode: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tokens [1, W] and probs [1, W, V] (None when deterministic) of a tree of shape PARENTS below ``context``."""
    tokens: list[int] = []
    probs: list[torch.Tensor] = []
    drawn: dict[int, list[int]] = {}  # parent -> its children's tokens so far
    for parent in PARENTS:
        prefix = context + [tokens[n] for n in path_of(PARENTS, parent)]
        q = _at(DRAFT, prefix)
        siblings = drawn.setdefault(parent, [])
        if mode == "without_replacement" or mode == "deterministic":
            q = q.clone()
            q[siblings] = 0.0
            q = q / q.sum()
        token = int(q.argmax()) if mode == "deterministic" else int(torch.multinomial(q, 1, generator=generator))
        siblings.append(token)
        tokens.append(token)
        probs.append(q)
    token_tensor = torch.tensor([tokens])
    return token_tensor, None if mode == "deterministic" else torch.stack(probs)[None]


def _first_two(sampler, mode: str, seed: int) -> torch.Tensor:
    """Generate from an empty context until two tokens are emitted, TRIALS times; the pairs as cells a * V + b."""
    generator = torch.Generator().manual_seed(seed)
    cells = []
    for _ in range(TRIALS):
        emitted: list[int] = []
        while len(emitted) < 2:
            tokens, probs = _draft_tree(emitted, mode, generator)
            block = [emitted] + [emitted + [int(tokens[0, n]) for n in path_of(PARENTS, node)] for node in range(6)]
            target_probs = torch.stack([_at(TARGET, context) for context in block])[None]  # [1, S, V]
            verdict = sampler(tokens, probs, torch.tensor(PARENTS), target_probs, generator)
            n = int(verdict.num_accepted)
            assert verdict.path is not None
            emitted += [int(tokens[0, node]) for node in verdict.path[0, :n].tolist()] + [int(verdict.next_tokens[0])]
        cells.append(emitted[0] * VOCAB + emitted[1])
    return torch.tensor(cells)


def _joint() -> torch.Tensor:
    return (TARGET[0][:, None] * TARGET[1]).flatten()  # [V * V]: p(a) p(b | a)


def _no_residual_sampler(tokens, probs, parents, target_probs, generator):
    """The planted bug: a rejected sibling leaves p unchanged (no residual max(0, p - q)), so every sibling is tried
    against the target's full distribution. The real sampler runs with its residual step replaced."""
    original = verification.residual_after_rejection
    verification.residual_after_rejection = lambda p, q: p
    try:
        return verification.tree_sample_verify(tokens, probs, parents, target_probs, generator)
    finally:
        verification.residual_after_rejection = original


@pytest.mark.parametrize("mode", ["with_replacement", "without_replacement", "deterministic"])
def test_tree_sampling_emits_the_target_distribution(mode):
    cells = _first_two(verification.tree_sample_verify, mode, seed=2)
    assert chi_square_pvalue(cells, _joint()) > ALPHA


@pytest.mark.parametrize("mode", ["with_replacement", "deterministic"])
def test_the_chi_square_check_catches_a_sampler_without_the_residual(mode):
    cells = _first_two(_no_residual_sampler, mode, seed=2)
    assert chi_square_pvalue(cells, _joint()) < 1e-6


def test_tree_greedy_verify_keeps_the_deepest_matching_path():
    logits = torch.full((1, 7, VOCAB), -5.0)
    # the target's argmax after: the root -> 1, node 0 -> 3, node 3 -> 4, anything else -> 2 (block = node + 1)
    for block, best in ((0, 1), (1, 3), (4, 4), (2, 2), (3, 2), (5, 2), (6, 2)):
        logits[0, block, best] = 5.0
    tokens = torch.tensor([[1, 2, 0, 3, 4, 2]])  # node 0 = 1 ok, 1 = 2 wrong (not 1), 2 = 0 wrong (not 3), 3 = 3 ok
    verdict = verification.tree_greedy_verify(tokens, torch.tensor(PARENTS), logits)
    # node 3 (below node 0) is the deepest matching path; node 5 matches its parent node 2 (2), but node 2 is wrong
    assert int(verdict.num_accepted) == 2 and verdict.path is not None
    assert verdict.path[0, :2].tolist() == [0, 3] and int(verdict.next_tokens[0]) == 4


ENGINE_CALLS = 3000


@pytest.fixture(scope="module")
def tiny_pair():
    return make_tiny_pair()


def _engine_pvalues(tiny_pair) -> tuple[float, float, int]:
    """A model-drafted tree (top-2 at the root, then greedy chains, verified with one-hot q) over the tiny
    target/draft pair, one sequence per call: the p-values of the first two tokens' joint and the third's marginal
    against the target's, and the drafted tokens accepted at the first step."""
    target, draft = tiny_pair
    prompt = [3, 1, 4]
    joint, marginal3 = exact_target_distributions(target, prompt, GenerationConfig(temperature=1.0))
    engine = SpeculativeEngine(loaded(target, "t"), make_drafter("model", model=loaded(draft, "d"), branching=2))
    rows, accepted = [], 0
    for call in range(ENGINE_CALLS):
        config = GenerationConfig(max_new_tokens=4, temperature=1.0, seed=100_000 + call, stop_at_eos=False)
        result = engine.generate(prompt, config, SpeculationConfig(k=2))
        rows.append(result.token_ids[0][:3])
        accepted += result.steps[0].accepted
        assert result.steps[0].tree_size == 4  # two branches, each 2 deep
    tokens = torch.tensor(rows)
    return (
        chi_square_pvalue(tokens[:, 0] * ENGINE_VOCAB + tokens[:, 1], joint),
        chi_square_pvalue(tokens[:, 2], marginal3),
        accepted,
    )


def test_the_engine_samples_the_target_joint_distribution_with_model_trees(tiny_pair):
    first_two, third, accepted = _engine_pvalues(tiny_pair)
    assert 0.1 * ENGINE_CALLS < accepted < 1.9 * ENGINE_CALLS  # accepted drafts and rejections are both exercised
    assert first_two > ALPHA and third > ALPHA


def test_the_engine_level_check_catches_a_tree_sampler_without_the_residual(tiny_pair, monkeypatch):
    monkeypatch.setattr(verification, "residual_after_rejection", lambda p, q: p)
    first_two, third, _ = _engine_pvalues(tiny_pair)
    assert min(first_two, third) < 1e-6
