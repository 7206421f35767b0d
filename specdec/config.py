"""Typed, frozen configuration of a generation run, validated once at construction.

Every check raises :class:`~specdec.errors.ConfigError` naming the field and what was expected, so that a CLI flag
or a suite YAML key that carries a bad value is reported where it came from (callers prefix the source).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from specdec.errors import ConfigError


class Policy(str, Enum):
    """How drafted tokens are accepted.

    ``LOSSLESS`` is exact: at temperature 0 the longest prefix of drafted tokens that equals the target's argmax, at
    temperature > 0 speculative (rejection) sampling. The three ``LOSSY_*`` policies are the seeds' heuristics: they
    accept tokens the target would not have produced, so their output differs from the target's own.
    """

    LOSSLESS = "lossless"
    LOSSY_THRESHOLD = "lossy-threshold"  # accept when the target gives the drafted token probability >= threshold
    LOSSY_TOPK = "lossy-topk"  # accept when the drafted token is among the target's top `topk_agreement` tokens
    LOSSY_TYPICAL = "lossy-typical"  # typical acceptance (Cai et al. 2024, Medusa)

    @property
    def is_lossless(self) -> bool:
        return self is Policy.LOSSLESS

    @classmethod
    def parse(cls, name: str | Policy) -> Policy:
        if isinstance(name, Policy):
            return name
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise ConfigError(f"unknown acceptance policy {name!r}: expected one of {known}") from None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate and how to sample it (shared by the target and the draft)."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    top_k: int | None = None  # keep the k most likely tokens (None or 0: all)
    top_p: float | None = None  # keep the smallest set of tokens whose probability reaches p (None or 1: all)
    seed: int = 0
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        _require(
            isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
            f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}",
        )
        _require(
            isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0.0,
            f"temperature must be a finite number >= 0, got {self.temperature!r}",
        )
        _require(self.top_k is None or self.top_k >= 0, f"top_k must be >= 0, got {self.top_k!r}")
        _require(self.top_p is None or 0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class AdaptiveKConfig:
    """Adjust K from a sliding window of per-step acceptance: up by `step` when the window's acceptance reaches
    `target_acceptance`, down by `step` when it falls below `target_acceptance - tolerance`, within [min_k, max_k]."""

    window: int = 8
    step: int = 1
    target_acceptance: float = 0.7
    tolerance: float = 0.2
    min_k: int = 1
    max_k: int = 8

    def __post_init__(self) -> None:
        _require(self.window >= 1, f"adaptive window must be >= 1, got {self.window!r}")
        _require(self.step >= 1, f"adaptive step must be >= 1, got {self.step!r}")
        _require(
            0.0 < self.target_acceptance <= 1.0,
            f"adaptive target_acceptance must be in (0, 1], got {self.target_acceptance!r}",
        )
        _require(0.0 <= self.tolerance < 1.0, f"adaptive tolerance must be in [0, 1), got {self.tolerance!r}")
        _require(self.min_k >= 1, f"adaptive min_k must be >= 1, got {self.min_k!r}")
        _require(self.max_k >= self.min_k, f"adaptive max_k ({self.max_k}) must be >= min_k ({self.min_k})")


@dataclass(frozen=True)
class AcceptanceConfig:
    """The acceptance policy and the parameters of the lossy ones."""

    policy: Policy = Policy.LOSSLESS
    threshold: float = 0.3  # LOSSY_THRESHOLD
    topk_agreement: int = 3  # LOSSY_TOPK
    typical_epsilon: float = 0.3  # LOSSY_TYPICAL: hard probability floor
    typical_delta: float = 0.09  # LOSSY_TYPICAL: entropy-scaled floor, delta * exp(-H)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", Policy.parse(self.policy))
        _require(0.0 < self.threshold <= 1.0, f"threshold must be in (0, 1], got {self.threshold!r}")
        _require(self.topk_agreement >= 1, f"topk_agreement must be >= 1, got {self.topk_agreement!r}")
        _require(self.typical_epsilon > 0.0, f"typical_epsilon must be > 0, got {self.typical_epsilon!r}")
        _require(self.typical_delta > 0.0, f"typical_delta must be > 0, got {self.typical_delta!r}")


@dataclass(frozen=True)
class SpeculationConfig:
    """How many tokens to draft per step (fixed `k`, or adaptive) and how to accept them."""

    k: int = 4
    adaptive: AdaptiveKConfig | None = None
    acceptance: AcceptanceConfig = field(default_factory=AcceptanceConfig)

    def __post_init__(self) -> None:
        _require(isinstance(self.k, int) and self.k >= 1, f"k must be an integer >= 1, got {self.k!r}")
        if self.adaptive is not None:
            a = self.adaptive
            _require(
                a.min_k <= self.k <= a.max_k,
                f"k ({self.k}) must lie in the adaptive bounds [{a.min_k}, {a.max_k}]",
            )

    @property
    def max_k(self) -> int:
        return self.adaptive.max_k if self.adaptive is not None else self.k
