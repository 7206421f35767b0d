"""The drafter interface: propose up to K tokens (and optionally their probabilities), then observe what was kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from specdec.config import GenerationConfig
from specdec.sequence import SequenceBatch


@dataclass(frozen=True)
class DraftProposal:
    """What a drafter proposes for one step: ``W`` tokens per row, ``0 <= W <= K``, the same ``W`` for every row.

    A **tree** proposal (``parents`` set, see :mod:`specdec.tree`) drafts ``W`` nodes below the last committed token;
    the target verifies them in one forward and keeps one root-to-node path. For a sampled tree ``probs[:, i]`` is
    the distribution node ``i`` was drawn from given what was drawn before it: the draft distribution at its parent
    (siblings drawn independently share it; siblings drawn without replacement carry it renormalised over the tokens
    not drawn yet). Without ``probs`` (a deterministic proposal) siblings must be distinct tokens. Trees are verified
    for a batch of one sequence.

    ``W = 0`` (nothing to propose) makes the step a plain autoregressive one through the same code. A drafter whose
    rows find continuations of different lengths says so with ``widths`` (per-row acceptance only: each row keeps at
    most its own width; the rest of its row is filler, scored but never kept); without per-row acceptance it
    proposes the shortest, since rows advance together by their shortest accepted prefix.
    """

    tokens: torch.Tensor  # [B, W] int64: the drafted tokens d_1..d_W
    probs: torch.Tensor | None  # [B, W, V] float32: q_i, the distribution each d_i was drawn from; None if not sampled
    # [W] int64 on the host: index of each drafted node's parent among the drafted nodes, -1 for a child of the last
    # committed token (the root); nodes in topological order (parent < index). None: a chain (= [-1, 0, ..., W - 2]).
    parents: torch.Tensor | None = None
    widths: torch.Tensor | None = None  # [B] int64, at most W: tokens drafted for each row; None: W for every row

    @property
    def width(self) -> int:
        """Drafted tokens: a chain's length, or a tree's node count."""
        return int(self.tokens.shape[1])

    @property
    def is_tree(self) -> bool:
        return self.parents is not None


@dataclass(frozen=True)
class FeatureRequest:
    """Which of the target's hidden states a drafter reads (Medusa and EAGLE heads draft from them).

    ``layers=()``: the final hidden state after the final norm (what the output head reads), [.., D]; else the
    outputs (residual stream, before any final norm) of these decoder layers (0-based), concatenated in this order,
    [.., len(layers) * D]. Features come in the target's dtype.
    """

    layers: tuple[int, ...] = ()

    def width(self, hidden_size: int) -> int:
        return hidden_size * max(1, len(self.layers))


def empty_proposal(batch: SequenceBatch) -> DraftProposal:
    """Nothing drafted: a [B, 0] proposal."""
    return DraftProposal(tokens=batch.tokens.new_empty((batch.batch_size, 0)), probs=None)


class Drafter(Protocol):
    """Something that guesses the target's next tokens. The verifier branches explicitly on ``probs is None``: a
    proposal without probabilities is verified as a deterministic one (``q`` one-hot on the drafted token).

    **Per-row acceptance** (``docs/batching.md``): a drafter with ``per_row = True`` lets each row of a batch keep
    its own accepted prefix. It then reads each row's committed tokens from ``batch.history[b, :batch.lengths[b]]``
    (the cache columns ``batch.tokens`` hold holes: rejected drafts of some rows), takes positions and the key mask
    of a draft model's cache from ``batch.positions`` / ``batch.key_valid`` whenever ``batch.layout_version``
    changed, and implements ``compact(batch, source)``: the batch's cache columns were compacted
    (``SequenceBatch.compact``), do the same to any cache by column. A drafter without it runs batches in lockstep.
    A per-row drafter that keeps state per row beyond the batch's tokens (``suffix``) also implements
    ``admit(batch, rows)``: new requests joined those rows of a slot batch (``Generation.admit``); a draft model's
    cache needs nothing (the joined prompts are new columns it reads at its next proposal).
    """

    name: str  # what drafts, for reports ("zoo:tiny-code-draft", "ngram(n=3..1)")
    method: str  # the drafting method ("model", "ngram", "suffix", "layerskip", or a custom drafter's name)

    @property
    def forwards(self) -> int:
        """Draft model forwards in this run (0 for drafters without a model)."""
        ...

    def start(self, batch: SequenceBatch) -> None:
        """A new batch of sequences begins (the prompt is in ``batch``): prefill any state."""

    def propose(
        self, batch: SequenceBatch, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        """Draft at most ``k`` tokens continuing ``batch.tokens[:, :batch.length]`` (a tree: at most ``k`` deep; a
        drafter whose trees hold more than ``k`` nodes says how many at most with ``max_width(k) -> int``, so that
        the target's cache has room for them)."""
        ...

    def observe(self, batch: SequenceBatch, num_accepted: int) -> None:
        """The target kept ``num_accepted`` drafted tokens (per row: the most any row kept, ``batch.lengths`` has
        each row's count) and committed up to ``batch.length``. After a tree step, the kept tokens are the accepted
        path's, already written into ``batch.tokens``."""


class FeatureReader(Protocol):
    """A drafter that reads the target's hidden states: it has ``features: FeatureRequest`` (a drafter without the
    attribute, or with None, gets none) and ``read_features``, which the engine calls after the prefill (right after
    ``start``) and after every step (right before ``observe``).

    The contract: ``features`` [B, N, F] are the target's hidden states at the N positions whose next tokens were just
    decided, in order, ``length`` the committed length after them (``batch.length``):

    - after the prefill: N = P, the prompt's positions 0..P-1 (left padding included; the last one chose the first
      new token); ``length = P + 1``;
    - after a step that kept n drafted tokens (chain or tree path): N = 1 + n, the root (the previously last
      committed token, at ``length - n - 2``) then the n kept tokens in order (at ``length - n - 1 .. length - 2``).
      The newest token, at ``length - 1``, has no features yet: they come with the next step.

    So the features at committed position t always arrive exactly once, and the features of position t are those
    a plain forward over the committed sequence computes there (a tree forward's features of the path nodes equal
    them).
    """

    features: FeatureRequest | None

    def read_features(self, features: torch.Tensor, length: int) -> None: ...
