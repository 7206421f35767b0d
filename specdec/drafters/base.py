"""The drafter interface: propose K tokens (and optionally their probabilities), then observe what was kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from specdec.config import GenerationConfig
from specdec.sequence import SequenceBatch


@dataclass(frozen=True)
class DraftProposal:
    tokens: torch.Tensor  # [B, K] int64: the drafted tokens d_1..d_K
    probs: torch.Tensor | None  # [B, K, V] float32: q_i, the distribution each d_i was drawn from; None if not sampled


class Drafter(Protocol):
    """Something that guesses the target's next tokens. The verifier branches explicitly on ``probs is None``."""

    name: str

    @property
    def forwards(self) -> int:
        """Draft model forwards in this run (0 for drafters without a model)."""
        ...

    def start(self, batch: SequenceBatch) -> None:
        """A new batch of sequences begins (the prompt is in ``batch``): prefill any state."""

    def propose(
        self, batch: SequenceBatch, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        """Draft ``k`` tokens continuing ``batch.tokens[:, :batch.length]``."""
        ...

    def observe(self, batch: SequenceBatch, num_accepted: int) -> None:
        """The target kept ``num_accepted`` drafted tokens and committed up to ``batch.length``."""
