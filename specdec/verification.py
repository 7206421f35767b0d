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

Batches, two ways. **Per row** (``limits`` given, see ``docs/batching.md``): row b keeps its own accepted prefix
``n_b``, cut at ``limits[b]`` (its drafted width and its remaining token budget), and emits its recovered or bonus
token after it. **Lockstep** (``limits`` None): rows advance together, so a step keeps ``n = min_b n_b`` tokens. A
row whose own run of acceptances is longer than its ``n`` emits its accepted ``d_{n+1}`` as the step's last token;
the others emit their recovered token. Stopping a row's run early at a point chosen independently of that row's
draws keeps every emitted token exact, so both stay lossless.

The ``synthetic`` policy is not lossless: the number kept is decided beforehand by a seeded schedule
(:mod:`specdec.synthetic_acceptance`) and the target only supplies the token after them (:func:`synthetic_verify`).

**Token trees** (``parents`` given, see :mod:`specdec.tree`): the target scores the root and every drafted node in
one forward (``p`` at block index 0 for the root, ``1 + i`` for node ``i``), and the verifier keeps one
root-to-node path, reported in :attr:`Verdict.path`. Greedy: the deepest node whose whole path equals the target's
argmax chain (:func:`tree_greedy_verify`). Sampling: recursive rejection sampling over siblings (SpecInfer, Miao et
al. 2024; EAGLE; Sequoia for siblings drawn without replacement), :func:`tree_sample_from_noise`. Only the
lossless policy verifies trees: the lossy and synthetic policies are defined for chains.

This module holds pure tensor functions (the references for the GPU kernels) and the thin :class:`Verifier` that
chooses among them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from specdec.config import AcceptanceConfig, GenerationConfig, Policy
from specdec.errors import ConfigError
from specdec.sampling import logits_to_probs, sample
from specdec.synthetic_acceptance import SyntheticAcceptance
from specdec.tree import ancestors, path_table


@dataclass(frozen=True)
class Verdict:
    """Outcome of one verification, all on the device (the engine reads them with a single sync)."""

    # []: lockstep: the drafted tokens every row keeps this step (the min over rows); per row: the most any row keeps
    num_accepted: torch.Tensor
    row_accepted: torch.Tensor  # [B]: each row's own longest accepted prefix (>= what it keeps)
    next_tokens: torch.Tensor  # [B]: the token after each row's kept drafts (recovered, bonus or an accepted draft)
    # [B, W] int64, trees only (None for a chain): the kept path's drafted-node indices in depth order, then -1;
    # its first num_accepted entries are the accepted tokens' nodes
    path: torch.Tensor | None = None
    kept: torch.Tensor | None = None  # [B]: per row, the drafted tokens each row keeps; None: lockstep

    @property
    def row_kept(self) -> torch.Tensor:
        """[B]: the drafted tokens each row keeps (``num_accepted`` for every row in lockstep)."""
        if self.kept is not None:
            return self.kept
        return self.num_accepted.reshape(1).expand(self.row_accepted.shape[0])


def accepted_prefix_length(accepted: torch.Tensor) -> torch.Tensor:
    """Length of the leading run of True per row. accepted: [B, K] bool -> [B] int64."""
    return accepted.long().cumprod(dim=-1).sum(dim=-1)


def _at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[b, index] for every row b. values: [B, N, ...], index: [] -> [B, ...]."""
    return values[torch.arange(values.shape[0], device=values.device), index]


def kept_length(row_accepted: torch.Tensor, limits: torch.Tensor | None) -> torch.Tensor:
    """What the rows keep: lockstep (``limits`` None) the min over rows, [] ; per row each row's own accepted
    prefix cut at its limit, [B]. row_accepted, limits: [B] int64."""
    return row_accepted.min() if limits is None else torch.minimum(row_accepted, limits)


def _finish(
    draft_tokens: torch.Tensor, row_accepted: torch.Tensor, own_choice_at_n: torch.Tensor, n: torch.Tensor
) -> Verdict:
    """Rows that accepted beyond ``n`` ([] lockstep, or [B] per row) emit their drafted token there; the rest emit
    ``own_choice_at_n``."""
    padded = torch.nn.functional.pad(draft_tokens, (0, 1))  # [B, K + 1]
    next_tokens = torch.where(row_accepted > n, _at(padded, n), own_choice_at_n)
    if n.dim() == 0:
        return Verdict(num_accepted=n, row_accepted=row_accepted, next_tokens=next_tokens)
    return Verdict(num_accepted=n.max(), row_accepted=row_accepted, next_tokens=next_tokens, kept=n)


def greedy_verify(
    draft_tokens: torch.Tensor, target_logits: torch.Tensor, limits: torch.Tensor | None = None
) -> Verdict:
    """Exact-match verification at temperature 0.

    draft_tokens: [B, K] int64; target_logits: [B, K + 1, V]; limits: [B] int64 (per row) or None (lockstep).
    """
    target_choice = target_logits.argmax(dim=-1)  # [B, K + 1]
    num_drafted = draft_tokens.shape[1]
    row_accepted = accepted_prefix_length(draft_tokens == target_choice[:, :num_drafted])  # [B]
    n = kept_length(row_accepted, limits)
    return _finish(draft_tokens, row_accepted, _at(target_choice, n), n)


def speculative_sample_verify(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
    from_noise: Callable[..., Verdict] | None = None,
    limits: torch.Tensor | None = None,
) -> Verdict:
    """Lossless speculative sampling: accept ``d_i`` with probability ``min(1, p_i(d_i) / q_i(d_i))``, then draw the
    recovered token from ``norm(max(0, p - q))`` (or the bonus token from ``p_{K+1}``).

    draft_tokens: [B, K]; draft_probs: [B, K, V] or None for a drafter that proposes deterministically (then ``q`` is
    one-hot on the drafted token); target_probs: [B, K + 1, V]. The random draws are made here, from ``generator``;
    ``from_noise`` (default: :func:`speculative_sample_from_noise`, or a kernel computing the same) does the rest.
    ``limits``: [B] (per row: the reference function runs, the kernels are lockstep only) or None (lockstep).
    """
    batch, num_drafted = draft_tokens.shape
    if draft_probs is None:  # a deterministic proposal: q = one-hot(d)
        draft_probs = torch.zeros_like(target_probs[:, :num_drafted])
        draft_probs.scatter_(-1, draft_tokens.unsqueeze(-1), 1.0)
    uniforms, exponentials = draw_noise(batch, num_drafted, target_probs.shape[-1], target_probs.device, generator)
    return verdict_from_noise(draft_tokens, draft_probs, target_probs, uniforms, exponentials, from_noise, limits)


def verdict_from_noise(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor,
    exponentials: torch.Tensor,
    from_noise: Callable[..., Verdict] | None = None,
    limits: torch.Tensor | None = None,
) -> Verdict:
    """Speculative sampling given its draws: ``from_noise`` lockstep (default :func:`speculative_sample_from_noise`,
    or a kernel computing the same); with ``limits`` [B] this module's function, per row (kernels are lockstep only)."""
    if limits is not None:
        return speculative_sample_from_noise(draft_tokens, draft_probs, target_probs, uniforms, exponentials, limits)
    lockstep = from_noise or speculative_sample_from_noise
    return lockstep(draft_tokens, draft_probs, target_probs, uniforms, exponentials)


def draw_noise(
    batch: int, num_drafted: int, vocab: int, device: torch.device, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of one speculative sampling step, in this order: uniforms [B, K] for the accept tests,
    exponentials [B, V] of Exp(1) for the recovered (or bonus) token's race."""
    uniforms = torch.rand((batch, num_drafted), generator=generator, device=device, dtype=torch.float32)
    exponentials = torch.empty((batch, vocab), device=device, dtype=torch.float32)
    exponentials.exponential_(generator=generator)
    return uniforms, exponentials


def speculative_sample_from_noise(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor,
    exponentials: torch.Tensor,
    limits: torch.Tensor | None = None,
) -> Verdict:
    """Speculative sampling given its random draws (the reference of the Triton kernel, which is lockstep only:
    ``limits`` None; with ``limits`` [B] each row keeps its own accepted prefix, cut there).

    uniforms: [B, K] in [0, 1): ``d_i`` is accepted when ``u_i * q_i(d_i) <= p_i(d_i)``. exponentials: [B, V] of
    Exp(1): the recovered token is ``argmax_v r(v) / E(v)`` for the residual ``r = max(0, p_n - q_n)`` (an exponential
    race, which draws ``v`` with probability ``r(v) / sum(r)``); ``p_n`` replaces ``r`` when ``r`` is all zero.
    """
    p_drafted = target_probs[:, : draft_tokens.shape[1]].gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)  # [B, K]
    q_drafted = draft_probs.gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)  # [B, K]
    row_accepted = accepted_prefix_length(uniforms * q_drafted <= p_drafted)  # u <= p/q, without dividing
    n = kept_length(row_accepted, limits)

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
    limits: torch.Tensor | None = None,
) -> Verdict:
    """Keep the first ``num_accepted`` drafted tokens of every row (decided beforehand, not by the target), then the
    target's own token at that position, as after a real rejection (or the bonus token when all were kept): its
    argmax at temperature 0, else a sample of its sampling distribution ``p_(n+1)``.

    draft_tokens: [B, K]; target_logits: [B, K + 1, V]; 0 <= num_accepted <= K; limits: [B] (per row: a row keeps
    at most its limit) or None.
    """
    batch = draft_tokens.shape[0]
    if limits is not None:
        kept = limits.clamp_max(num_accepted)  # [B]
        logits_kept = _at(target_logits, kept)  # [B, V]
        if generation.greedy:
            choice = logits_kept.argmax(dim=-1)
        else:
            choice = sample(logits_to_probs(logits_kept, generation), generator)
        return Verdict(num_accepted=kept.max(), row_accepted=kept, next_tokens=choice, kept=kept)
    logits_n = target_logits[:, num_accepted]  # [B, V]
    if generation.greedy:
        own_choice = logits_n.argmax(dim=-1)
    else:
        own_choice = sample(logits_to_probs(logits_n, generation), generator)
    device = target_logits.device  # torch.full fills on the device: no host-to-device copy in the step
    n = torch.full((), num_accepted, dtype=torch.long, device=device)
    row_accepted = torch.full((batch,), num_accepted, dtype=torch.long, device=device)
    return Verdict(num_accepted=n, row_accepted=row_accepted, next_tokens=own_choice)


def tree_greedy_verify(draft_tokens: torch.Tensor, parents: torch.Tensor, target_logits: torch.Tensor) -> Verdict:
    """Exact-match verification of a token tree at temperature 0: keep the deepest node whose whole path equals the
    target's argmax chain, then the target's argmax after it. The output is the target's own greedy output.

    draft_tokens: [B, W]; parents: [W] (host); target_logits: [B, S, V], S = W + 1, root first.
    """
    device = target_logits.device
    choice = target_logits.argmax(dim=-1)  # [B, S]: the target's next token after each block token
    parent_block = (parents + 1).to(device)  # [W]: block index of each node's parent
    wrong = draft_tokens != choice[:, parent_block]  # [B, W]
    visible = ancestors(parents).to(device)  # [S, S]
    depth = visible.sum(dim=1) - 1  # [S]
    path_ok = ~(visible[None, 1:, 1:] & wrong[:, None, :]).any(dim=-1)  # [B, W]: no wrong node on the path
    ok = torch.nn.functional.pad(path_ok, (1, 0), value=True)  # [B, S]: the root is always kept
    best = torch.where(ok, depth, -1).argmax(dim=1)  # [B]: the deepest kept block token (the first among equals)
    return _tree_verdict(best, depth, choice.gather(1, best[:, None]).squeeze(1), parents)


def _tree_verdict(best: torch.Tensor, depth: torch.Tensor, next_tokens: torch.Tensor, parents: torch.Tensor) -> Verdict:
    """best: [B] block index of each row's deepest kept token; depth: [S]; next_tokens: [B]."""
    row_accepted = depth[best]  # [B]
    path = path_table(parents).to(best.device)[best]  # [B, W]
    return Verdict(num_accepted=row_accepted.min(), row_accepted=row_accepted, next_tokens=next_tokens, path=path)


def tree_sample_verify(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    parents: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
) -> Verdict:
    """Lossless verification of a sampled (or deterministic) token tree; the random draws are made here.

    draft_tokens: [B, W]; draft_probs: [B, W, V], ``q_i`` the distribution node i was drawn from, or None for a
    deterministic proposal (``q_i`` one-hot on its token); parents: [W] (host); target_probs: [B, S, V].
    """
    batch, width = draft_tokens.shape
    if draft_probs is None:
        draft_probs = torch.zeros_like(target_probs[:, 1:])
        draft_probs.scatter_(-1, draft_tokens.unsqueeze(-1), 1.0)
    device = target_probs.device
    uniforms = torch.rand((batch, width), generator=generator, device=device, dtype=torch.float32)
    exponentials = torch.empty((batch, target_probs.shape[-1]), device=device, dtype=torch.float32)
    exponentials.exponential_(generator=generator)
    return tree_sample_from_noise(draft_tokens, draft_probs, parents, target_probs, uniforms, exponentials)


def residual_after_rejection(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))``, the distribution left to the next sibling after one drawn from ``q`` was rejected;
    ``p`` itself where nothing is left (``p == q``: a rejection had probability 0). p, q: [B, V] -> [B, V]."""
    residual = (p - q).clamp_min(0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp_min(1e-30), p)


def tree_sample_from_noise(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    parents: torch.Tensor,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor,
    exponentials: torch.Tensor,
) -> Verdict:
    """Recursive rejection sampling over siblings, given its random draws.

    Start at the root with ``p`` the target's distribution there. Try the current node's children in index order:
    child ``c`` (drawn from ``q_c``) is accepted when ``u_c * q_c(c) <= p(c)`` (probability ``min(1, p/q)``), and
    then becomes the current node, ``p`` the target's distribution after it; a rejection replaces ``p`` by the
    residual ``norm(max(0, p - q_c))`` and the next sibling is tried against it. When no child is accepted (or
    there is none) the next token is drawn from the current ``p`` by the exponential race ``argmax p / E``.

    Each candidate is either accepted with ``min(p, q)`` or leaves ``max(0, p - q)`` to its successors, so the
    emitted token follows ``p`` whatever the siblings (SpecInfer's multi-step speculative sampling for siblings
    drawn independently from one ``q``; Sequoia's for siblings drawn without replacement, each with its own
    renormalised ``q``; one-hot ``q`` for deterministic ones, where a repeated sibling has ``p = 0`` and is never
    accepted). One pass over the nodes in topological order visits every child of the current node in order,
    because a node's children come after it and the rejected siblings of an accepted node before its children.

    draft_tokens: [B, W]; draft_probs: [B, W, V]; parents: [W] (host); target_probs: [B, S, V]; uniforms: [B, W] in
    [0, 1); exponentials: [B, V] of Exp(1).
    """
    batch = draft_tokens.shape[0]
    current = torch.full((batch,), -1, dtype=torch.long, device=target_probs.device)  # drafted index, -1: root
    p = target_probs[:, 0]  # [B, V]
    for node, parent in enumerate(parents.tolist()):
        token = draft_tokens[:, node : node + 1]  # [B, 1]
        q = draft_probs[:, node]  # [B, V]
        is_child = current == parent  # [B]
        accept = is_child & (uniforms[:, node] * q.gather(1, token).squeeze(1) <= p.gather(1, token).squeeze(1))
        residual = residual_after_rejection(p, q)
        rejected = is_child & ~accept
        p = torch.where(accept[:, None], target_probs[:, node + 1], torch.where(rejected[:, None], residual, p))
        current = torch.where(accept, node, current)
    depth = ancestors(parents).sum(dim=1).to(target_probs.device) - 1  # [S]
    return _tree_verdict(current + 1, depth, (p / exponentials).argmax(dim=-1), parents)


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
        parents: torch.Tensor | None = None,
        limits: torch.Tensor | None = None,
    ) -> Verdict:
        """draft_tokens: [B, W]; draft_probs: [B, W, V] or None; target_logits: [B, W + 1, V]. ``k``: the K the step
        asked for (W <= K; the synthetic schedule is the one at K, default W). ``parents``: [W] (host) for a token
        tree, None for a chain. ``limits``: [B] int64, per-row acceptance (row b keeps at most ``limits[b]``
        drafts; the PyTorch functions run: the kernels are lockstep only), or None for lockstep."""
        if parents is not None:
            return self.verify_tree(draft_tokens, draft_probs, parents, target_logits, generator)
        if self.synthetic is not None:
            drafted = draft_tokens.shape[1]
            kept = self.synthetic.decide(k if k is not None else drafted, drafted)
            return synthetic_verify(draft_tokens, target_logits, kept, self.generation, generator, limits)
        if self.acceptance.policy.is_lossless:
            if self.generation.greedy:
                if limits is not None:
                    return greedy_verify(draft_tokens, target_logits, limits)
                return self._greedy(draft_tokens, target_logits)
            return speculative_sample_verify(
                draft_tokens, draft_probs, self.target_probs(target_logits), generator, self._from_noise, limits=limits
            )
        target_probs = self.target_probs(target_logits)
        row_accepted = accepted_prefix_length(lossy_accepted(draft_tokens, target_probs, self.acceptance))
        n = kept_length(row_accepted, limits)
        if self.generation.greedy:
            own_choice = _at(target_logits, n).argmax(dim=-1)
        else:
            own_choice = sample(_at(target_probs, n), generator)
        return _finish(draft_tokens, row_accepted, own_choice, n)

    @property
    def _greedy(self) -> Callable[..., Verdict]:
        """The kernel set's ``greedy_verify``, or this module's."""
        return self.kernels.greedy_verify if self.kernels is not None else greedy_verify

    @property
    def _from_noise(self) -> Callable[..., Verdict]:
        """The kernel set's ``speculative_sample_from_noise``, or this module's."""
        return self.kernels.speculative_sample_from_noise if self.kernels is not None else speculative_sample_from_noise

    @property
    def samples_from_noise(self) -> bool:
        """Whether a sampled step can verify from noise drawn beforehand (:meth:`sample_from_noise`, which a fast
        path replays with the target's forward as one graph): lossless speculative sampling, not synthetic."""
        return not self.generation.greedy and self.synthetic is None and self.acceptance.policy.is_lossless

    def sample_from_noise(
        self,
        target_logits: torch.Tensor,
        uniforms: torch.Tensor,
        exponentials: torch.Tensor,
        draft_tokens: torch.Tensor | None = None,
        draft_probs: torch.Tensor | None = None,
        limits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Device work only: what :meth:`verify` gives for a sampled chain from the noise of :func:`draw_noise`
        (uniforms [B, K], exponentials [B, V]); target_logits: [B, K + 1, V]; draft_tokens [B, K] and draft_probs
        [B, K, V] (None: a step that drafted nothing, K = 0); ``limits`` [B] per-row acceptance, or None (lockstep).
        Returns the verdict's (num_accepted, row_accepted, next_tokens), and its ``kept`` [B] with ``limits``."""
        batch, vocab = target_logits.shape[0], target_logits.shape[-1]
        if draft_tokens is None or draft_probs is None:
            draft_tokens = torch.empty((batch, 0), dtype=torch.long, device=target_logits.device)
            draft_probs = torch.zeros((batch, 0, vocab), dtype=torch.float32, device=target_logits.device)
        target_probs = self.target_probs(target_logits)
        verdict = verdict_from_noise(
            draft_tokens, draft_probs, target_probs, uniforms, exponentials, self._from_noise, limits
        )  # fmt: skip
        if limits is None:
            return verdict.num_accepted, verdict.row_accepted, verdict.next_tokens
        assert verdict.kept is not None
        return verdict.num_accepted, verdict.row_accepted, verdict.next_tokens, verdict.kept

    @property
    def verifies_greedy_on_device(self) -> bool:
        """Whether a greedy chain step can verify as device work after the forward (:meth:`greedy_from_logits`, which
        a fast path replays with the target's forward as one graph): lossless greedy, not synthetic."""
        return self.generation.greedy and self.synthetic is None and self.acceptance.policy.is_lossless

    def greedy_from_logits(
        self, target_logits: torch.Tensor, draft_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Device work only: what :meth:`verify` gives for a greedy chain in lockstep; target_logits [B, K + 1, V],
        draft_tokens [B, K] (K may be 0). Returns the verdict's (num_accepted, row_accepted, next_tokens)."""
        verdict = self._greedy(draft_tokens, target_logits)
        return verdict.num_accepted, verdict.row_accepted, verdict.next_tokens

    def check_trees(self, drafter_name: str) -> None:
        """Refuse token trees under a policy that is not lossless on them (lossy and synthetic: chains only)."""
        if not self.acceptance.policy.is_lossless:
            raise ConfigError(
                f"drafter {drafter_name!r} proposes token trees, which only the lossless policy verifies; the "
                f"{self.acceptance.policy.value} policy is defined for chains (draft chains: branching=1)"
            )

    def verify_tree(
        self,
        draft_tokens: torch.Tensor,
        draft_probs: torch.Tensor | None,
        parents: torch.Tensor,
        target_logits: torch.Tensor,
        generator: torch.Generator | None,
    ) -> Verdict:
        """A token tree (PyTorch functions on every device: the tree has no Triton kernel yet)."""
        self.check_trees("this drafter")
        if self.generation.greedy:
            return tree_greedy_verify(draft_tokens, parents, target_logits)
        return tree_sample_verify(draft_tokens, draft_probs, parents, self.target_probs(target_logits), generator)
