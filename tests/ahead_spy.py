"""A spy on a drafter's ``draft_ahead``, for the tests of drafting ahead (EAGLE heads and draft models)."""

from __future__ import annotations

from specdec import SpeculativeEngine


def counting_ahead(engine: SpeculativeEngine) -> list[bool]:
    """Turn drafting ahead on (a CPU leaves it off) and record what each ``draft_ahead`` call answered."""
    drafter = engine.drafter
    drafter.ahead = True  # type: ignore[union-attr]
    answers: list[bool] = []
    original = drafter.draft_ahead  # type: ignore[union-attr]

    def spy(*args, **kwargs):
        answers.append(original(*args, **kwargs))
        return answers[-1]

    drafter.draft_ahead = spy  # type: ignore[union-attr]
    return answers
