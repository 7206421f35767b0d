"""The target features a head drafter reads, kept by position.

The engine hands a drafter the target's features of newly committed positions (``read_features``): after prefill
the prompt's positions, after each step the root (the previous last committed token) and the accepted tokens. A
feature at position ``t`` is the target state that predicted token ``t + 1``; the newest committed token (the
target's own bonus token) has none yet. :class:`FeatureBuffer` stores them at their positions: N features read
with the committed length ``length`` cover positions ``length - 1 - N .. length - 2`` (the contract of
:class:`specdec.drafters.base.FeatureReader`).
"""

from __future__ import annotations

import torch

from specdec.drafters.base import FeatureRequest

__all__ = ["FeatureBuffer", "FeatureRequest"]


class FeatureBuffer:
    def __init__(self) -> None:
        self.features: torch.Tensor | None = None  # [B, max_length, F]
        self.known = 0  # positions 0..known-1 have features

    def reset(self) -> None:
        self.features, self.known = None, 0

    def read(self, features: torch.Tensor, length: int, max_length: int) -> int:
        """Store features [B, N, F] of the positions before the newest committed one (``length`` committed);
        returns the first position they cover."""
        b, n, f = features.shape
        if self.features is None:
            self.features = features.new_zeros(b, max_length, f)
        start = length - 1 - n
        self.features[:, start : start + n] = features
        self.known = start + n
        return start
