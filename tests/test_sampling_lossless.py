"""Speculative sampling produces exactly the target's distribution, and the test can tell a wrong sampler."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from scipy import stats
from tiny_models import loaded, make_model

import specdec.verification as verification
from specdec import DraftSpec, GenerationConfig, SpeculationConfig, SpeculativeEngine, make_drafter
from specdec.sampling import logits_to_probs

ALPHA = 1e-3  # a correct sampler fails a test with this probability; the seeds are fixed, so runs are repeatable


def chi_square_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square test of integer samples against a distribution.

    A sample in a cell of probability 0 fails outright (p-value 0); cells expecting fewer than 5 are pooled.
    """
    probs = probs.flatten().double()
    counts = torch.bincount(samples.flatten(), minlength=probs.numel()).double()
    if counts[probs == 0].sum() > 0:
        return 0.0
    counts, probs = counts[probs > 0], probs[probs > 0]
    expected = probs / probs.sum() * counts.sum()
    small = expected < 5
    if small.sum() > 1:
        counts = torch.cat([counts[~small], counts[small].sum().reshape(1)])
        expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    return float(stats.chisquare(counts.numpy(), expected.numpy()).pvalue)


right_sampler = verification.speculative_sample_verify


def wrong_sampler(draft_tokens, draft_probs, target_probs, generator, from_noise=None, limits=None):
    """A plausible bug: after a rejection, resample from the target's p instead of the residual max(0, p - q)."""
    batch, k = draft_tokens.shape
    if k == 0:
        return right_sampler(draft_tokens, draft_probs, target_probs, generator, from_noise, limits)
    p_drafted = target_probs[:, :k].gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    q_drafted = draft_probs.gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    uniform = torch.rand((batch, k), generator=generator)
    row_accepted = verification.accepted_prefix_length(uniform * q_drafted <= p_drafted)
    n = verification.kept_length(row_accepted, limits)  # [] lockstep, [B] per row
    resampled = torch.multinomial(target_probs[torch.arange(batch), n], 1, generator=generator).squeeze(-1)
    padded = torch.nn.functional.pad(draft_tokens, (0, 1))
    next_tokens = torch.where(row_accepted > n, padded[torch.arange(batch), n], resampled)
    if limits is None:
        return verification.Verdict(num_accepted=n, row_accepted=row_accepted, next_tokens=next_tokens)
    return verification.Verdict(n.max(), row_accepted, next_tokens, kept=n)


def emitted_tokens_by_position(sampler, p, q, trials: int, seed: int) -> list[list[int]]:
    """Run one verification per trial (batch of one row) with drafts drawn from q; collect emitted tokens by index."""
    generator = torch.Generator().manual_seed(seed)
    k = q.shape[0]
    by_position: list[list[int]] = [[] for _ in range(k + 1)]
    for _ in range(trials):
        drafts = torch.multinomial(q, 1, generator=generator).reshape(1, k)
        verdict = sampler(drafts, q[None], p[None], generator)
        n = int(verdict.num_accepted)
        for i in range(n):
            by_position[i].append(int(drafts[0, i]))
        by_position[n].append(int(verdict.next_tokens[0]))
    return by_position


def _distributions(vocab: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    concentration = torch.full((vocab,), 0.7)
    p = torch.distributions.Dirichlet(concentration).sample((k + 1,))  # [K + 1, V] target
    q = torch.distributions.Dirichlet(concentration).sample((k,))  # [K, V] draft, deliberately different
    return p, q


def test_each_emitted_position_follows_the_target_distribution():
    p, q = _distributions(vocab=6, k=3, seed=0)
    by_position = emitted_tokens_by_position(verification.speculative_sample_verify, p, q, trials=12000, seed=1)
    for position, tokens in enumerate(by_position):
        assert len(tokens) > 500
        assert chi_square_pvalue(torch.tensor(tokens), p[position]) > ALPHA, f"position {position}"


def test_the_chi_square_check_detects_a_wrong_sampler():
    p, q = _distributions(vocab=6, k=3, seed=0)
    by_position = emitted_tokens_by_position(wrong_sampler, p, q, trials=12000, seed=1)
    assert chi_square_pvalue(torch.tensor(by_position[0]), p[0]) < 1e-6


def test_deterministic_drafts_without_probabilities_are_verified_exactly():
    """A drafter that returns no probabilities (q one-hot on its token) still yields the target's distribution."""
    p, _ = _distributions(vocab=6, k=1, seed=3)
    generator = torch.Generator().manual_seed(4)
    drafts = torch.full((1, 1), int(p[0].argmin()))  # a bad guess, to exercise the residual
    first_tokens = []
    for _ in range(8000):
        verdict = verification.speculative_sample_verify(drafts, None, p[None], generator)
        first_tokens.append(int(drafts[0, 0]) if int(verdict.num_accepted) == 1 else int(verdict.next_tokens[0]))
    # the first emitted token is either the accepted draft or a residual sample: either way distributed as p[0]
    assert chi_square_pvalue(torch.tensor(first_tokens), p[0]) > ALPHA


# ----------------------------------------------------------------------------------- through the whole engine
VOCAB = 8
ROWS_PER_CALL = 4  # rows of one batch, each keeping its own accepted prefix
CALLS = 1500


@pytest.fixture(scope="module")
def tiny_pair():
    return make_tiny_pair()


def make_tiny_pair():
    """A target and a perturbed copy of it: similar enough to accept often, not always."""
    target = make_model("llama", seed=21, layers=2, vocab=VOCAB)
    draft = copy.deepcopy(target)
    generator = torch.Generator().manual_seed(22)
    with torch.no_grad():
        for weight in draft.parameters():
            weight.add_(0.02 * torch.randn(weight.shape, generator=generator))
    return target, draft


def three_token_pvalues(tokens: torch.Tensor, joint: torch.Tensor, marginal3: torch.Tensor) -> tuple[float, float]:
    """Chi-square p-values of sampled first three tokens ([N, 3]) against p(t1, t2) and p(t3)."""
    return (
        chi_square_pvalue(tokens[:, 0] * VOCAB + tokens[:, 1], joint),
        chi_square_pvalue(tokens[:, 2], marginal3),
    )


def exact_target_distributions(target, prompt: list[int], config: GenerationConfig):
    """p(t1, t2) [V, V] and p(t3) [V] of the target under `config`, by enumeration."""
    with torch.no_grad():
        first = logits_to_probs(target(torch.tensor([prompt])).logits[0, -1], config)  # [V]
        pairs = torch.tensor([[*prompt, a] for a in range(VOCAB)])
        second = logits_to_probs(target(pairs).logits[:, -1], config)  # [V, V]
        joint = first[:, None] * second  # [V, V]
        triples = torch.tensor([[*prompt, a, b] for a in range(VOCAB) for b in range(VOCAB)])
        third = logits_to_probs(target(triples).logits[:, -1], config)  # [V*V, V]
        marginal3 = (joint.reshape(-1, 1) * third).sum(0)
    return joint, marginal3


def sample_first_three_tokens(target, draft, prompt, config, load=loaded, batch=ROWS_PER_CALL, calls=CALLS):
    """t1 comes from the prefill; with max_new_tokens=4 and K=2, t2 and t3 come from the first speculative step.
    ``draft``: a draft model, or a drafting method from `make_drafter`; ``load(model, name)``: the LoadedModel
    (default: on the CPU)."""
    engine = SpeculativeEngine(load(target, "t"), draft if isinstance(draft, DraftSpec) else load(draft, "d"))
    rows, accepted = [], 0
    for call in range(calls):
        seeded = GenerationConfig(
            max_new_tokens=4,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            seed=config.seed * 100_000 + call,
            stop_at_eos=False,
        )
        result = engine.generate([prompt] * batch, seeded, SpeculationConfig(k=2))
        rows.extend(ids[:3] for ids in result.token_ids)
        accepted += result.steps[0].accepted / result.steps[0].rows  # drafts the mean row kept in the first step
    return torch.tensor(rows), accepted


CONFIGS = [
    GenerationConfig(temperature=1.0, seed=1),
    GenerationConfig(temperature=0.7, top_k=5, top_p=0.9, seed=2),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["t1", "t0.7-topk5-topp0.9"])
def test_engine_samples_the_target_joint_distribution(tiny_pair, config):
    target, draft = tiny_pair
    prompt = [3, 1, 4]
    joint, marginal3 = exact_target_distributions(target, prompt, config)
    tokens, accepted = sample_first_three_tokens(target, draft, prompt, config)
    assert 0.1 * CALLS < accepted < 1.9 * CALLS  # both accepted drafts and recovered tokens are exercised
    assert min(three_token_pvalues(tokens, joint, marginal3)) > ALPHA


PEAKED = GenerationConfig(temperature=0.5, seed=3)  # whole batches accept the lookups' deterministic drafts
MODEL_FREE = {
    "ngram": (make_drafter("ngram"), PEAKED),
    "suffix": (make_drafter("suffix", min_match=1, min_prob=0.1), PEAKED),
    "layerskip": (make_drafter("layerskip", layers=1), CONFIGS[0]),
}


@pytest.mark.parametrize("method", list(MODEL_FREE))
def test_every_drafting_method_samples_the_target_joint_distribution(tiny_pair, method):
    target, _ = tiny_pair
    drafter, config = MODEL_FREE[method]
    # the target's own greedy text as the prompt: it repeats itself, so lookups propose what the target favours
    ids = torch.tensor([[3, 1, 4]])
    prompt = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=13, do_sample=False)[0].tolist()
    joint, marginal3 = exact_target_distributions(target, prompt, config)
    tokens, accepted = sample_first_three_tokens(target, drafter, prompt, config)
    assert 0.05 * CALLS < accepted < 1.9 * CALLS  # drafts were proposed, and both accepted and rejected
    assert min(three_token_pvalues(tokens, joint, marginal3)) > ALPHA


def wrong_from_noise(draft_tokens, draft_probs, target_probs, uniforms, exponentials, limits=None):
    """The same bug in the from-noise form the engine runs (the sampled step's draws made beforehand): after a
    rejection, the exponential race on the target's p instead of the residual max(0, p - q)."""
    batch, k = draft_tokens.shape
    rows = torch.arange(batch)
    p_drafted = target_probs[:, :k].gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    q_drafted = draft_probs.gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    row_accepted = verification.accepted_prefix_length(uniforms * q_drafted <= p_drafted)
    n = verification.kept_length(row_accepted, limits)  # [] lockstep, [B] per row
    resampled = (target_probs[rows, n] / exponentials).argmax(dim=-1)
    padded = torch.nn.functional.pad(draft_tokens, (0, 1))
    next_tokens = torch.where(row_accepted > n, padded[rows, n], resampled)
    if limits is None:
        return verification.Verdict(num_accepted=n, row_accepted=row_accepted, next_tokens=next_tokens)
    return verification.Verdict(n.max(), row_accepted, next_tokens, kept=n)


@pytest.mark.parametrize("rows", [1, ROWS_PER_CALL], ids=["lockstep", "per-row"])
def test_engine_level_check_detects_a_wrong_sampler(tiny_pair, monkeypatch, rows):
    """The bug planted where the engine's sampled chain steps verify: the kernel set's function (lockstep) and the
    PyTorch one (per-row acceptance, batches)."""
    import specdec.kernels as kernels

    target, draft = tiny_pair
    config = CONFIGS[0]
    joint, marginal3 = exact_target_distributions(target, [3, 1, 4], config)
    monkeypatch.setattr(verification, "speculative_sample_from_noise", wrong_from_noise)
    wrong_set = dataclasses.replace(kernels.TORCH_KERNELS, speculative_sample_from_noise=wrong_from_noise)
    monkeypatch.setattr(kernels, "TORCH_KERNELS", wrong_set)
    tokens, _ = sample_first_three_tokens(
        target, draft, [3, 1, 4], config, batch=rows, calls=CALLS * ROWS_PER_CALL // rows
    )  # the same samples
    assert min(three_token_pvalues(tokens, joint, marginal3)) < 1e-6


def test_same_seed_same_samples(tiny_pair):
    target, draft = tiny_pair
    engine = SpeculativeEngine(loaded(target, "t"), loaded(draft, "d"))
    config = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=5, stop_at_eos=False)
    first = engine.generate([3, 1, 4], config, SpeculationConfig(k=3)).token_ids
    assert engine.generate([3, 1, 4], config, SpeculationConfig(k=3)).token_ids == first
    other = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=6, stop_at_eos=False)
    assert engine.generate([3, 1, 4], other, SpeculationConfig(k=3)).token_ids != first
