"""The analytic speedup of speculative decoding at a given acceptance profile and cost (Leviathan et al. 2023, §3).

Model. A step drafts K tokens, each costing ``c`` target forwards (``c = t_draft / t_target`` per drafted token),
then verifies them in one target forward over K + 1 tokens, costing ``v`` target forwards (``v = 1`` when a
(K + 1)-token forward costs what a one-token forward does, as it nearly does while decoding is bound by reading the
weights). With ``p_i`` the chance that the first i drafted tokens are all accepted (the unconditional per-position
rates), a step yields ``1 + sum_i p_i`` tokens (the accepted ones and the target's own), so against one token per
target forward::

    speedup = (1 + sum_{i<=K} p_i) / (K * c + v)

For one conditional rate ``a`` at every position ``p_i = a^i`` and the yield is ``(1 - a^(K+1)) / (1 - a)``. What a
real run falls short of this is overhead outside the two phases: host work between steps, the prefill.
"""

from __future__ import annotations

from collections.abc import Sequence


def expected_tokens_per_step(unconditional_rates: Sequence[float]) -> float:
    """``1 + sum_i p_i``: tokens one step yields on average (the bonus or recovered token included)."""
    return 1.0 + sum(unconditional_rates)


def predicted_speedup(unconditional_rates: Sequence[float], cost_ratio: float, verify_cost: float = 1.0) -> float:
    """The model's speedup over autoregressive decoding for a step of ``K = len(unconditional_rates)`` drafts.

    cost_ratio: ``c``, one drafted token's cost in target forwards; verify_cost: ``v``, the verification forward's
    cost in target forwards (default 1).
    """
    k = len(unconditional_rates)
    return expected_tokens_per_step(unconditional_rates) / (k * cost_ratio + verify_cost)
