"""Hand-written cases for the acceptance rules, greedy and lossy, on single rows and batches."""

from __future__ import annotations

import pytest
import torch

from specdec.config import AcceptanceConfig, GenerationConfig, Policy
from specdec.verification import Verifier, accepted_prefix_length, greedy_verify, speculative_sample_verify

V = 6


def logits_preferring(tokens: list[list[int]]) -> torch.Tensor:
    """Logits [B, len, V] whose argmax at each position is the given token."""
    logits = torch.zeros(len(tokens), len(tokens[0]), V)
    for b, row in enumerate(tokens):
        for i, t in enumerate(row):
            logits[b, i, t] = 5.0
    return logits


def test_accepted_prefix_length_stops_at_the_first_rejection():
    accepted = torch.tensor([[True, True, False, True], [False, True, True, True], [True] * 4])
    assert accepted_prefix_length(accepted).tolist() == [2, 0, 4]


@pytest.mark.parametrize(
    ("draft", "target", "n", "next_token"),
    [
        ([1, 2, 3], [1, 2, 3, 4], 3, 4),  # all accepted: bonus token from the last position
        ([1, 2, 3], [1, 5, 3, 4], 1, 5),  # mismatch at 2: the target's token replaces it, the rest is dropped
        ([1, 2, 3], [0, 2, 3, 4], 0, 0),  # first draft wrong: one token still emitted
        ([], [4], 0, 4),  # K = 0 is plain decoding
    ],
)
def test_greedy_keeps_the_longest_matching_prefix(draft, target, n, next_token):
    verdict = greedy_verify(torch.tensor([draft], dtype=torch.long).reshape(1, -1), logits_preferring([target]))
    assert int(verdict.num_accepted) == n
    assert verdict.next_tokens.tolist() == [next_token]


def test_greedy_batch_advances_by_the_shortest_row_and_keeps_longer_rows_exact():
    draft = torch.tensor([[1, 2, 3], [1, 2, 3]])
    target = logits_preferring([[1, 2, 3, 4], [1, 5, 3, 4]])
    verdict = greedy_verify(draft, target)
    assert int(verdict.num_accepted) == 1
    assert verdict.row_accepted.tolist() == [3, 1]
    # row 0 accepted "2" at position 1; row 1 gets the target's correction "5"
    assert verdict.next_tokens.tolist() == [2, 5]


def test_identical_distributions_accept_every_sampled_draft():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(64, 4, V, generator=generator), dim=-1)
    draft = torch.multinomial(probs[:, :3].reshape(-1, V), 1, generator=generator).reshape(64, 3)
    verdict = speculative_sample_verify(draft, probs[:, :3], probs, generator)
    assert verdict.row_accepted.tolist() == [3] * 64


def test_a_draft_the_target_rules_out_is_always_rejected():
    generator = torch.Generator().manual_seed(0)
    target = torch.zeros(1, 2, V)
    target[0, :, 1] = 1.0  # the target only ever says 1
    draft_probs = torch.zeros(1, 1, V)
    draft_probs[0, 0, 2] = 1.0
    for _ in range(50):
        verdict = speculative_sample_verify(torch.tensor([[2]]), draft_probs, target, generator)
        assert int(verdict.num_accepted) == 0
        assert verdict.next_tokens.tolist() == [1]


def make_verifier(policy: Policy, temperature: float = 0.0, **kwargs) -> Verifier:
    return Verifier(AcceptanceConfig(policy=policy, **kwargs), GenerationConfig(temperature=temperature))


def test_lossy_threshold_accepts_a_likely_but_not_best_token():
    logits = torch.log(torch.tensor([[[0.05, 0.55, 0.4, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]]) + 1e-9)
    draft = torch.tensor([[2]])  # p = 0.4, not the argmax
    lossless = make_verifier(Policy.LOSSLESS).verify(draft, None, logits, None)
    assert int(lossless.num_accepted) == 0 and lossless.next_tokens.tolist() == [1]
    lossy = make_verifier(Policy.LOSSY_THRESHOLD, threshold=0.3).verify(draft, None, logits, None)
    assert int(lossy.num_accepted) == 1 and lossy.next_tokens.tolist() == [3]
    strict = make_verifier(Policy.LOSSY_THRESHOLD, threshold=0.5).verify(draft, None, logits, None)
    assert int(strict.num_accepted) == 0


def test_lossy_topk_accepts_within_the_targets_top_tokens():
    logits = torch.tensor([[[0.0, 4.0, 3.0, 2.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0, 9.0, 0.0]]])
    assert (
        int(
            make_verifier(Policy.LOSSY_TOPK, topk_agreement=3)
            .verify(torch.tensor([[3]]), None, logits, None)
            .num_accepted
        )
        == 1
    )
    assert (
        int(
            make_verifier(Policy.LOSSY_TOPK, topk_agreement=2)
            .verify(torch.tensor([[3]]), None, logits, None)
            .num_accepted
        )
        == 0
    )


def test_lossy_typical_uses_an_entropy_scaled_floor():
    flat = torch.zeros(1, 2, V)  # uniform target: high entropy, low floor -> any token passes
    assert int(make_verifier(Policy.LOSSY_TYPICAL).verify(torch.tensor([[5]]), None, flat, None).num_accepted) == 1
    peaked = torch.tensor([[[9.0, 0.0, 0.0, 0.0, 0.0, 0.0]] * 2])
    assert int(make_verifier(Policy.LOSSY_TYPICAL).verify(torch.tensor([[5]]), None, peaked, None).num_accepted) == 0
