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
    accept tokens the target would not have produced, so their output differs from the target's own. ``SYNTHETIC``
    is NOT lossless either: it decides how many drafted tokens to keep from a seeded schedule, whatever the target
    says (``specdec.synthetic_acceptance``), to measure cost at a chosen acceptance without a trained draft.
    """

    LOSSLESS = "lossless"
    LOSSY_THRESHOLD = "lossy-threshold"  # accept when the target gives the drafted token probability >= threshold
    LOSSY_TOPK = "lossy-topk"  # accept when the drafted token is among the target's top `topk_agreement` tokens
    LOSSY_TYPICAL = "lossy-typical"  # typical acceptance (Cai et al. 2024, Medusa)
    SYNTHETIC = "synthetic"  # forced acceptance at a requested rate, rates or length (vLLM's synthetic sampler)

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


SYNTHETIC_PARAMETERS = ("acceptance_rate", "acceptance_rates", "acceptance_length")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class AcceptanceConfig:
    """The acceptance policy and the parameters of the lossy and synthetic ones.

    ``SYNTHETIC`` takes exactly one of (vLLM's meanings, ``specdec.synthetic_acceptance`` has the details):
    ``acceptance_rate`` (the mean acceptance rate, accepted / drafted tokens, in (0, 1]), ``acceptance_rates`` (per
    draft position i, the probability that the first i drafted tokens are all accepted; non-increasing, in [0, 1],
    one per position up to K) or ``acceptance_length`` (mean tokens per step counting the bonus token, in [1, K + 1]).
    """

    policy: Policy = Policy.LOSSLESS
    threshold: float = 0.3  # LOSSY_THRESHOLD
    topk_agreement: int = 3  # LOSSY_TOPK
    typical_epsilon: float = 0.3  # LOSSY_TYPICAL: hard probability floor
    typical_delta: float = 0.09  # LOSSY_TYPICAL: entropy-scaled floor, delta * exp(-H)
    acceptance_rate: float | None = None  # SYNTHETIC: mean accepted / drafted
    acceptance_rates: tuple[float, ...] | None = None  # SYNTHETIC: P(first i drafts accepted), i = 1..
    acceptance_length: float | None = None  # SYNTHETIC: mean tokens per step, bonus included

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", Policy.parse(self.policy))
        _require(0.0 < self.threshold <= 1.0, f"threshold must be in (0, 1], got {self.threshold!r}")
        _require(self.topk_agreement >= 1, f"topk_agreement must be >= 1, got {self.topk_agreement!r}")
        _require(self.typical_epsilon > 0.0, f"typical_epsilon must be > 0, got {self.typical_epsilon!r}")
        _require(self.typical_delta > 0.0, f"typical_delta must be > 0, got {self.typical_delta!r}")
        if self.acceptance_rates is not None and not isinstance(self.acceptance_rates, tuple):
            rates = self.acceptance_rates
            _require(
                isinstance(rates, (list, tuple)),
                f"acceptance_rates must be a list of numbers (one per draft position), got {rates!r}",
            )
            object.__setattr__(self, "acceptance_rates", tuple(rates))
        given = [name for name in SYNTHETIC_PARAMETERS if getattr(self, name) is not None]
        if self.policy is not Policy.SYNTHETIC:
            _require(not given, f"{', '.join(given)} only applies with policy synthetic, not {self.policy.value}")
            return
        _require(
            len(given) == 1,
            "policy synthetic needs exactly one of acceptance_rate, acceptance_rates or acceptance_length, got "
            + (", ".join(given) if given else "none"),
        )
        self._check_synthetic()

    def _check_synthetic(self) -> None:
        rate, rates, length = self.acceptance_rate, self.acceptance_rates, self.acceptance_length
        if rate is not None:
            _require(_is_number(rate) and 0.0 < rate <= 1.0, f"acceptance_rate must be in (0, 1], got {rate!r}")
        if rates is not None:
            _require(len(rates) > 0, "acceptance_rates is empty: give one rate per draft position, e.g. [0.9, 0.8]")
            bad = [r for r in rates if not (_is_number(r) and 0.0 <= r <= 1.0)]
            if bad:
                raise ConfigError(
                    f"acceptance_rates entries must be numbers in [0, 1], got {bad[0]!r} in {list(rates)}"
                )
            rising = [i for i in range(1, len(rates)) if rates[i] > rates[i - 1]]
            _require(
                not rising,
                f"acceptance_rates must not increase (entry i is the chance that the first i drafts are all "
                f"accepted), got {list(rates)}",
            )
        if length is not None:
            _require(_is_number(length) and length >= 1.0, f"acceptance_length must be >= 1, got {length!r}")

    @property
    def synthetic(self) -> dict[str, float | list[float]] | None:
        """The synthetic parameter as given (``{"acceptance_rate": 0.8}``), or None for other policies."""
        if self.policy is not Policy.SYNTHETIC:
            return None
        for name in SYNTHETIC_PARAMETERS:
            value = getattr(self, name)
            if value is not None:
                return {name: list(value) if isinstance(value, tuple) else value}
        return None


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
        rates, length = self.acceptance.acceptance_rates, self.acceptance.acceptance_length
        if rates is not None:
            _require(
                len(rates) >= self.max_k,
                f"acceptance_rates has {len(rates)} entries but K can reach {self.max_k}: give one rate per draft "
                "position up to K",
            )
        if length is not None:
            _require(
                length <= self.max_k + 1,
                f"acceptance_length must be in [1, K + 1] = [1, {self.max_k + 1}] (tokens per step, the bonus token "
                f"included), got {length!r}",
            )

    @property
    def max_k(self) -> int:
        return self.adaptive.max_k if self.adaptive is not None else self.k
