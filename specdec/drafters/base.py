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

    ``W = 0`` (nothing to propose) makes the step a plain autoregressive one through the same code. A drafter whose
    rows find continuations of different lengths proposes the shortest: rows of a batch advance together by their
    shortest accepted prefix, so a longer proposal for one row could not be committed anyway.
    """

    tokens: torch.Tensor  # [B, W] int64: the drafted tokens d_1..d_W
    probs: torch.Tensor | None  # [B, W, V] float32: q_i, the distribution each d_i was drawn from; None if not sampled

    @property
    def width(self) -> int:
        return int(self.tokens.shape[1])


def empty_proposal(batch: SequenceBatch) -> DraftProposal:
    """Nothing drafted: a [B, 0] proposal."""
    return DraftProposal(tokens=batch.tokens.new_empty((batch.batch_size, 0)), probs=None)


class Drafter(Protocol):
    """Something that guesses the target's next tokens. The verifier branches explicitly on ``probs is None``: a
    proposal without probabilities is verified as a deterministic one (``q`` one-hot on the drafted token)."""

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
        """Draft at most ``k`` tokens continuing ``batch.tokens[:, :batch.length]``."""
        ...

    def observe(self, batch: SequenceBatch, num_accepted: int) -> None:
        """The target kept ``num_accepted`` drafted tokens and committed up to ``batch.length``."""
