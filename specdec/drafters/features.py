"""The target features a head drafter reads, kept by position.

The engine hands a drafter the target's features of newly committed positions (``read_features``): after prefill
the prompt's positions, after each step the root (the previous last committed token) and the accepted tokens. A
feature at position ``t`` is the target state that predicted token ``t + 1``; the newest committed token (the
target's own bonus token) has none yet. :class:`FeatureBuffer` stores them at their positions: the first read
starts at 0, each later one at the root of the last proposal (the last committed position when it was drafted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

try:  # the engine's feature channel (specdec.drafters.base) is landing in parallel with the head drafters
    from specdec.drafters.base import FeatureRequest  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - until it lands

    @dataclass(frozen=True)
    class FeatureRequest:  # type: ignore[no-redef]
        layers: tuple[int, ...] = ()  # (): the final hidden state after the final norm; else these layers' outputs


class FeatureBuffer:
    def __init__(self) -> None:
        self.features: torch.Tensor | None = None  # [B, max_length, F]
        self.known = 0  # positions 0..known-1 have features
        self.next_start = 0  # where the next read begins

    def reset(self) -> None:
        self.features, self.known, self.next_start = None, 0, 0

    def read(self, features: torch.Tensor, max_length: int) -> int:
        """Store features [B, S, F] of the next positions; returns the first position they cover."""
        b, s, f = features.shape
        if self.features is None:
            self.features = features.new_zeros(b, max_length, f)
        start = self.next_start
        self.features[:, start : start + s] = features
        self.known = start + s
        return start

    def mark_root(self, length: int) -> None:
        """A proposal was drafted after ``length`` committed positions: the next read starts at its root."""
        self.next_start = length - 1
