"""A test-only pytest plugin that plants a slowdown in the draft path, to check that the speedup gate catches it.

Never a mode of the product: it is loaded only by ``scripts/gate/experiment.py`` (``-p slow_draft`` with this folder
on ``PYTHONPATH``) and patches the drafters' ``propose`` for the session. Each proposal busy-waits long enough that a
speculative step takes ``1 / (1 - LOSS)`` times as long as it did without the plant, so the speculative run's
tokens/s, and with it the speedup over the untouched autoregressive run, falls by ``LOSS`` (15% by default;
``SPECDEC_PLANTED_LOSS`` sets another). The step's own duration is read off the clock between two proposals of the
same generation, minus the wait planted in the previous one; the first proposal of a generation uses the last
duration seen.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from specdec.drafters.model import ModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.suffix import SuffixDrafter

LOSS = float(os.environ.get("SPECDEC_PLANTED_LOSS", "0.15"))
EXTRA = 1.0 / (1.0 - LOSS) - 1.0  # extra time per step, as a fraction of the step's own time


class _Clock:
    def __init__(self) -> None:
        self.previous_start: float | None = None  # when the previous proposal of this generation started
        self.previous_wait = 0.0
        self.last_step = 0.0  # seconds: the last step's own duration (without the planted wait)

    def start(self) -> None:
        self.previous_start = None

    def wait(self) -> None:
        now = time.perf_counter()
        if self.previous_start is not None:
            self.last_step = now - self.previous_start - self.previous_wait
        wait = EXTRA * self.last_step
        deadline = now + wait
        while time.perf_counter() < deadline:  # busy: the core stays occupied, as slower drafting code would
            pass
        self.previous_start, self.previous_wait = now, wait


def _plant(cls: type, clock: _Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    start, propose = cls.start, cls.propose  # type: ignore[attr-defined]

    def slow_start(self: Any, *args: Any, **kwargs: Any) -> Any:
        clock.start()
        return start(self, *args, **kwargs)

    def slow_propose(self: Any, *args: Any, **kwargs: Any) -> Any:
        clock.wait()
        return propose(self, *args, **kwargs)

    monkeypatch.setattr(cls, "start", slow_start)
    monkeypatch.setattr(cls, "propose", slow_propose)


def pytest_configure(config: pytest.Config) -> None:
    monkeypatch = pytest.MonkeyPatch()
    clock = _Clock()
    for cls in (ModelDrafter, NgramDrafter, SuffixDrafter):
        _plant(cls, clock, monkeypatch)
    config.add_cleanup(monkeypatch.undo)


def pytest_report_header(config: pytest.Config) -> str:
    return f"slow_draft (test-only): every speculative step {EXTRA:.1%} longer, a planted {LOSS:.0%} loss of speedup"
