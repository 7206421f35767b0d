"""Deciding which drafted tokens to keep, given the target's scores of all of them from one forward.

Notation (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding"; Chen et al. 2023,
"Accelerating Large Language Model Decoding with Speculative Sampling"): the drafter proposes ``K`` tokens
``d_1..d_K`` with probabilities ``q_i``; one target forward over ``[last, d_1..d_K]`` gives ``K + 1`` target
distributions ``p_1..p_{K+1}``.

- **accepted** tokens: the longest prefix ``d_1..d_n`` that the policy keeps;
- **recovered** token: after a rejection at ``n + 1``, a token drawn from the target's side of the difference:
  ``argmax p_{n+1}`` when greedy, else a sample of ``norm(max(0, p_{n+1} - q_{n+1}))``;
- **bonus** token: when all ``K`` are accepted, the target's own choice from ``p_{K+1}``.

So every step emits ``n + 1`` tokens. The *acceptance rate* counts accepted drafted tokens only, never the bonus.

Batches: rows advance together, so a step keeps ``n = min_b n_b`` tokens. A row whose own run of acceptances is
longer emits its accepted ``d_{n+1}`` as the step's last token; the others emit their recovered token. Stopping a
row's run early at a point chosen independently of that row keeps every emitted token exact, so this stays lossless.

The ``synthetic`` policy is not lossless: the number kept is decided beforehand by a seeded schedule
(:mod:`specdec.synthetic_acceptance`) and the target only supplies the token after them (:func:`synthetic_verify`).

This module holds pure tensor functions (the references for the GPU kernels) and the thin :class:`Verifier` that
chooses among them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from specdec.config import AcceptanceConfig, GenerationConfig, Policy
from specdec.sampling import logits_to_probs, sample
from specdec.synthetic_acceptance import SyntheticAcceptance


@dataclass(frozen=True)
class Verdict:
    """Outcome of one verification, all on the device (the engine reads them with a single sync)."""

    num_accepted: torch.Tensor  # []: drafted tokens every row keeps this step (min over rows)
    row_accepted: torch.Tensor  # [B]: each row's own longest accepted prefix (>= num_accepted)
    next_tokens: torch.Tensor  # [B]: the token at position num_accepted (recovered, bonus or an accepted draft)


def accepted_prefix_length(accepted: torch.Tensor) -> torch.Tensor:
    """Length of the leading run of True per row. accepted: [B, K] bool -> [B] int64."""
    return accepted.long().cumprod(dim=-1).sum(dim=-1)


def _at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[b, index] for every row b. values: [B, N, ...], index: [] -> [B, ...]."""
    return values[torch.arange(values.shape[0], device=values.device), index]


def _finish(
    draft_tokens: torch.Tensor, row_accepted: torch.Tensor, own_choice_at_n: torch.Tensor, n: torch.Tensor
) -> Verdict:
    """Rows that accepted beyond ``n`` emit their drafted token there; the rest emit ``own_choice_at_n``."""
    padded = torch.nn.functional.pad(draft_tokens, (0, 1))  # [B, K + 1]
    next_tokens = torch.where(row_accepted > n, _at(padded, n), own_choice_at_n)
    return Verdict(num_accepted=n, row_accepted=row_accepted, next_tokens=next_tokens)


def greedy_verify(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> Verdict:
    """Exact-match verification at temperature 0.

    draft_tokens: [B, K] int64; target_logits: [B, K + 1, V].
    """
    target_choice = target_logits.argmax(dim=-1)  # [B, K + 1]
    num_drafted = draft_tokens.shape[1]
    row_accepted = accepted_prefix_length(draft_tokens == target_choice[:, :num_drafted])  # [B]
    n = row_accepted.min()
    return _finish(draft_tokens, row_accepted, _at(target_choice, n), n)


def speculative_sample_verify(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
    from_noise: Callable[..., Verdict] | None = None,
) -> Verdict:
    """Lossless speculative sampling: accept ``d_i`` with probability ``min(1, p_i(d_i) / q_i(d_i))``, then draw the
    recovered token from ``norm(max(0, p - q))`` (or the bonus token from ``p_{K+1}``).

    draft_tokens: [B, K]; draft_probs: [B, K, V] or None for a drafter that proposes deterministically (then ``q`` is
    one-hot on the drafted token); target_probs: [B, K + 1, V]. The random draws are made here, from ``generator``;
    ``from_noise`` (default: :func:`speculative_sample_from_noise`, or a kernel computing the same) does the rest.
    """
    batch, num_drafted = draft_tokens.shape
    if draft_probs is None:  # a deterministic proposal: q = one-hot(d)
        draft_probs = torch.zeros_like(target_probs[:, :num_drafted])
        draft_probs.scatter_(-1, draft_tokens.unsqueeze(-1), 1.0)
    device = target_probs.device
    uniforms = torch.rand((batch, num_drafted), generator=generator, device=device, dtype=torch.float32)
    exponentials = torch.empty((batch, target_probs.shape[-1]), device=device, dtype=torch.float32)
    exponentials.exponential_(generator=generator)
    return (from_noise or speculative_sample_from_noise)(
        draft_tokens, draft_probs, target_probs, uniforms, exponentials
    )


def speculative_sample_from_noise(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor,
    exponentials: torch.Tensor,
) -> Verdict:
    """Speculative sampling given its random draws (the reference of the Triton kernel).

    uniforms: [B, K] in [0, 1): ``d_i`` is accepted when ``u_i * q_i(d_i) <= p_i(d_i)``. exponentials: [B, V] of
    Exp(1): the recovered token is ``argmax_v r(v) / E(v)`` for the residual ``r = max(0, p_n - q_n)`` (an exponential
    race, which draws ``v`` with probability ``r(v) / sum(r)``); ``p_n`` replaces ``r`` when ``r`` is all zero.
    """
    p_drafted = target_probs[:, : draft_tokens.shape[1]].gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)  # [B, K]
    q_drafted = draft_probs.gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)  # [B, K]
    row_accepted = accepted_prefix_length(uniforms * q_drafted <= p_drafted)  # u <= p/q, without dividing
    n = row_accepted.min()

    p_n = _at(target_probs, n)  # [B, V]
    q_n = _at(torch.nn.functional.pad(draft_probs, (0, 0, 0, 1)), n)  # [B, V]; zeros at n == K (bonus)
    residual = (p_n - q_n).clamp_min(0.0)
    has_mass = residual.sum(dim=-1, keepdim=True) > 0
    race = torch.where(has_mass, residual, p_n) / exponentials  # [B, V]
    return _finish(draft_tokens, row_accepted, race.argmax(dim=-1), n)


def lossy_accepted(
    draft_tokens: torch.Tensor, target_probs: torch.Tensor, acceptance: AcceptanceConfig
) -> torch.Tensor:
    """Which drafted tokens a lossy policy keeps. draft_tokens: [B, K]; target_probs: [B, K + 1, V] -> [B, K] bool.

    The target's most likely token is always kept, so at temperature 0 these policies accept a superset of greedy.
    """
    num_drafted = draft_tokens.shape[1]
    probs = target_probs[:, :num_drafted]  # [B, K, V]
    p_drafted = probs.gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)  # [B, K]
    is_best = draft_tokens == probs.argmax(dim=-1)
    policy = acceptance.policy
    if policy is Policy.LOSSY_THRESHOLD:
        keep = p_drafted >= acceptance.threshold
    elif policy is Policy.LOSSY_TOPK:
        top = torch.topk(probs, min(acceptance.topk_agreement, probs.shape[-1]), dim=-1).indices  # [B, K, k]
        keep = (top == draft_tokens.unsqueeze(-1)).any(dim=-1)
    elif policy is Policy.LOSSY_TYPICAL:
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1)  # [B, K]
        floor = torch.minimum(
            torch.full_like(entropy, acceptance.typical_epsilon),
            acceptance.typical_delta * torch.exp(-entropy),
        )
        keep = p_drafted > floor
    else:
        raise ValueError(f"{policy} is not a lossy policy")
    return keep | is_best


def synthetic_verify(
    draft_tokens: torch.Tensor,
    target_logits: torch.Tensor,
    num_accepted: int,
    generation: GenerationConfig,
    generator: torch.Generator | None,
) -> Verdict:
    """Keep the first ``num_accepted`` drafted tokens of every row (decided beforehand, not by the target), then the
    target's own token at that position, as after a real rejection (or the bonus token when all were kept): its
    argmax at temperature 0, else a sample of its sampling distribution ``p_(n+1)``.

    draft_tokens: [B, K]; target_logits: [B, K + 1, V]; 0 <= num_accepted <= K.
    """
    batch = draft_tokens.shape[0]
    logits_n = target_logits[:, num_accepted]  # [B, V]
    if generation.greedy:
        own_choice = logits_n.argmax(dim=-1)
    else:
        own_choice = sample(logits_to_probs(logits_n, generation), generator)
    device = target_logits.device  # torch.full fills on the device: no host-to-device copy in the step
    n = torch.full((), num_accepted, dtype=torch.long, device=device)
    row_accepted = torch.full((batch,), num_accepted, dtype=torch.long, device=device)
    return Verdict(num_accepted=n, row_accepted=row_accepted, next_tokens=own_choice)


class Verifier:
    """Chooses the verification function for a policy and sampling setting, from a kernel set.

    ``kernels`` provides ``greedy_verify`` and ``speculative_sample_from_noise`` (the reference functions of this
    module, or Triton kernels computing the same); ``backend`` names the set that ran.
    """

    def __init__(self, acceptance: AcceptanceConfig, generation: GenerationConfig, kernels: Any = None) -> None:
        self.acceptance = acceptance
        self.generation = generation
        self.kernels = kernels
        self.backend = kernels.name if kernels is not None else "torch"
        self.synthetic = (
            SyntheticAcceptance(acceptance, generation.seed) if acceptance.policy is Policy.SYNTHETIC else None
        )

    def target_probs(self, target_logits: torch.Tensor) -> torch.Tensor:
        """The distribution the policy compares drafts with: the sampling distribution, or softmax at T=0."""
        if self.generation.greedy:
            return torch.softmax(target_logits.float(), dim=-1)
        return logits_to_probs(target_logits, self.generation)

    def verify(
        self,
        draft_tokens: torch.Tensor,
        draft_probs: torch.Tensor | None,
        target_logits: torch.Tensor,
        generator: torch.Generator | None,
        k: int | None = None,
    ) -> Verdict:
        """draft_tokens: [B, W]; draft_probs: [B, W, V] or None; target_logits: [B, W + 1, V]. ``k``: the K the step
        asked for (W <= K; the synthetic schedule is the one at K, default W)."""
        if self.synthetic is not None:
            drafted = draft_tokens.shape[1]
            kept = self.synthetic.decide(k if k is not None else drafted, drafted)
            return synthetic_verify(draft_tokens, target_logits, kept, self.generation, generator)
        if self.acceptance.policy.is_lossless:
            if self.generation.greedy:
                greedy = self.kernels.greedy_verify if self.kernels is not None else greedy_verify
                return greedy(draft_tokens, target_logits)
            from_noise = self.kernels.speculative_sample_from_noise if self.kernels is not None else None
            return speculative_sample_verify(
                draft_tokens, draft_probs, self.target_probs(target_logits), generator, from_noise
            )
        target_probs = self.target_probs(target_logits)
        row_accepted = accepted_prefix_length(lossy_accepted(draft_tokens, target_probs, self.acceptance))
        n = row_accepted.min()
        if self.generation.greedy:
            own_choice = _at(target_logits, n).argmax(dim=-1)
        else:
            own_choice = sample(_at(target_probs, n), generator)
        return _finish(draft_tokens, row_accepted, own_choice, n)
