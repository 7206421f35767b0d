"""Synthetic acceptance: how many drafted tokens a step keeps, decided by a seeded schedule instead of the target.

This is NOT lossless: it keeps drafted tokens the target may disagree with, so the output differs from the target's
own. It exists to measure what a system costs at a chosen acceptance profile without a draft trained to reach it:
the drafter still proposes and the target still verifies every drafted token in one forward (the real cost); only
the decision how many of them to keep comes from here. The token after the kept ones is the target's own choice, as
after a real rejection (``verification.synthetic_verify``).

Meanings (vLLM's ``rejection_sample_method="synthetic"``, so that figures compare), for a step that drafts up to K:

- ``acceptance_rate`` r: the mean acceptance rate, accepted drafted tokens / drafted tokens (vLLM's
  ``synthetic_acceptance_rate``, also ATOM's: ``(length - 1) / K``). As vLLM's, the chance decays geometrically
  with the position: every position is accepted with one *conditional* rate ``a`` (the chance to accept position i
  given positions < i were accepted), so position i is reached and accepted with probability ``a^i``; ``a`` is
  solved at the step's K so that ``(1/K) sum_{i<=K} a^i = r``.
- ``acceptance_rates`` [p_1, p_2, ...]: vLLM's ``synthetic_acceptance_rates``, *unconditional* per position: p_i is
  the chance that the first i drafted tokens are all accepted (non-increasing). The conditional rate at i is
  ``p_i / p_(i-1)``. vLLM's own per-position metrics (accepted at i / drafts) are these unconditional rates.
- ``acceptance_length`` L: vLLM's ``synthetic_acceptance_length`` and SGLang's simulated acceptance length: mean
  tokens per step, the bonus (or recovered) token included, in [1, K + 1]. As vLLM, it becomes the
  minimum-variance schedule at the step's K: p = [1, ..., 1, frac, 0, ...] with ``floor(L - 1)`` ones and
  ``frac = L - 1 - floor(L - 1)``, so ``1 + sum p_i = L``. (A step whose K + 1 < L, under adaptive K, keeps all.)

In all three the expected tokens per step at K are ``1 + sum_i p_i`` (``specdec.analysis``). A position that was not
drafted (a model-free drafter may propose fewer than K) cannot be accepted: its rate is simply not applied.

The generator. Independent Bernoulli draws miss a requested rate by ~sqrt(r(1-r)/n), about 0.03 over 250 draws,
more than the 0.02 a benchmark needs. Here each position i keeps a *credit*: every step that drafts position i adds
``p_i`` to it, every step that accepts position i takes 1 from it. A step draws one seeded uniform u and keeps the
prefix of drafted positions 1..n whose summed ``credit_i - u`` is largest (n = 0 if no prefix sum is positive):
each position individually would be kept iff its credit exceeds u (randomised rounding, which is what makes steps
look random), and the best prefix is the closest choice that keeps accepted tokens a prefix. The credits stay
within about +-1.7 (simulated, K up to 8), so the count accepted at each position tracks ``p_i x (steps that drafted
it)`` to within about two tokens whatever the run length.

Per-position errors of up to two tokens each add up, at K = 8 over a few dozen steps, to a mean rate 0.03 off. So
when one mean ``acceptance_rate`` is what was asked for, the prefix's score also pays ``0.3 (|S - n| - 1)^2`` for
the part beyond one token of the summed credit S left after keeping n: the total accepted tracks ``r x drafted``
to about a token, at the price of a looser geometric shape per position. What this matches, over one generation
of 256 tokens (this generator in isolation, 300 seeds each):

- ``acceptance_rate``: accepted / drafted within 0.015 of r for every K in 2..8 and r in 0.5..0.95;
- ``acceptance_rates``: accepted at i / steps that drafted i within 0.025 of p_i at K <= 4 (about 0.04 at K = 8,
  where a deep position is drafted only ~30 times, so one token is 0.033);
- ``acceptance_length``: within 1 / (steps) (only the fractional position is random).

The uniforms come from a ``random.Random`` seeded with the generation's seed: a run repeats exactly, and nothing here
touches the device (the decision is known on the host before the target's verdict is read).
"""

from __future__ import annotations

import math
import random

from specdec.config import AcceptanceConfig, Policy

_BISECTION_STEPS = 60
_TOTAL_WEIGHT = 0.3  # what a token of summed credit beyond the band costs a prefix, for a mean acceptance_rate
_TOTAL_BAND = 1.0


def geometric_rates(mean_rate: float, k: int) -> list[float]:
    """Unconditional rates ``a^i``, i = 1..k, with the one conditional rate ``a`` for which their mean is
    ``mean_rate`` (accepted / drafted at K = k)."""
    if mean_rate >= 1.0:
        return [1.0] * k
    low, high = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):  # sum_i a^i / k rises with a from 0 to 1
        middle = (low + high) / 2
        if sum(middle**i for i in range(1, k + 1)) / k < mean_rate:
            low = middle
        else:
            high = middle
    a = (low + high) / 2
    return [a**i for i in range(1, k + 1)]


def length_rates(length: float, k: int) -> list[float]:
    """vLLM's minimum-variance schedule: ``floor(L - 1)`` certain positions, one fractional, then none; all k
    positions certain when ``L >= k + 1``."""
    drafts = length - 1.0
    whole = min(math.floor(drafts), k)
    rates = [1.0] * whole
    if whole < k:
        rates.append(drafts - whole)
    return rates + [0.0] * (k - len(rates))


def conditional_rates(unconditional: list[float]) -> list[float]:
    """``c_i = p_i / p_(i-1)`` (with ``p_0 = 1``; 0 after a position that is never reached)."""
    previous = [1.0, *unconditional[:-1]]
    return [p / q if q > 0.0 else 0.0 for p, q in zip(unconditional, previous, strict=True)]


def unconditional_rates(acceptance: AcceptanceConfig, k: int) -> list[float]:
    """p_1..p_k for a step that drafts at most ``k`` tokens under the synthetic policy ``acceptance``."""
    if acceptance.policy is not Policy.SYNTHETIC:
        raise ValueError(f"{acceptance.policy.value} is not the synthetic policy")
    if acceptance.acceptance_rate is not None:
        return geometric_rates(acceptance.acceptance_rate, k)
    if acceptance.acceptance_length is not None:
        return length_rates(acceptance.acceptance_length, k)
    assert acceptance.acceptance_rates is not None
    rates = list(acceptance.acceptance_rates[:k])
    return rates + [rates[-1]] * (k - len(rates))  # validation makes the list cover K; this only guards


class SyntheticAcceptance:
    """The seeded decision of one generation (see the module docstring): ``decide(k, drafted)`` -> tokens kept."""

    def __init__(self, acceptance: AcceptanceConfig, seed: int) -> None:
        self.acceptance = acceptance
        self._random = random.Random(seed)
        self._credits: list[float] = []  # per draft position
        self._rates: dict[int, list[float]] = {}  # unconditional rates by the step's K
        self._total_weight = _TOTAL_WEIGHT if acceptance.acceptance_rate is not None else 0.0

    def rates(self, k: int) -> list[float]:
        if k not in self._rates:
            self._rates[k] = unconditional_rates(self.acceptance, k)
        return self._rates[k]

    def decide(self, k: int, drafted: int) -> int:
        """How many of the ``drafted`` tokens (``drafted <= k``) a step that asked for ``k`` keeps."""
        if drafted <= 0:
            return 0
        rates = self.rates(max(k, drafted))
        if len(self._credits) < drafted:
            self._credits += [0.0] * (drafted - len(self._credits))
        credits = self._credits
        for i in range(drafted):
            credits[i] += rates[i]
        threshold = self._random.random()
        summed = sum(credits)
        kept, best, total = 0, -self._total_cost(summed), 0.0
        for i in range(drafted):  # the prefix whose credits exceed the threshold most in total
            total += credits[i] - threshold
            score = total - self._total_cost(summed - (i + 1))
            if score > best:
                kept, best = i + 1, score
        for i in range(kept):
            credits[i] -= 1.0
        return kept

    def _total_cost(self, left: float) -> float:
        """The penalty on the summed credit ``left`` after a choice (0 unless a mean rate was asked for)."""
        beyond = abs(left) - _TOTAL_BAND
        return self._total_weight * beyond * beyond if beyond > 0.0 else 0.0
