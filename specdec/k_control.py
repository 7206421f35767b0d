"""How many tokens to draft next: fixed, or adapted to recent acceptance."""

from __future__ import annotations

from collections import deque
from typing import Protocol

from specdec.config import AdaptiveKConfig, SpeculationConfig


class KController(Protocol):
    def next_k(self) -> int: ...

    def update(self, drafted: int, accepted: int) -> None: ...


class FixedK:
    def __init__(self, k: int) -> None:
        self.k = k

    def next_k(self) -> int:
        return self.k

    def update(self, drafted: int, accepted: int) -> None:
        pass


class AdaptiveK:
    """Moves K by ``step`` once a full window of steps is seen: up when the window's acceptance (accepted / drafted)
    reaches the target, down when it falls below ``target - tolerance``. The window restarts after each change."""

    def __init__(self, config: AdaptiveKConfig, initial_k: int) -> None:
        self.config = config
        self.k = initial_k
        self._window: deque[tuple[int, int]] = deque(maxlen=config.window)

    def next_k(self) -> int:
        return self.k

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        self._window.append((drafted, accepted))
        if len(self._window) < self.config.window:
            return
        acceptance = sum(a for _, a in self._window) / sum(d for d, _ in self._window)
        c = self.config
        if acceptance >= c.target_acceptance and self.k < c.max_k:
            self.k = min(c.max_k, self.k + c.step)
            self._window.clear()
        elif acceptance < c.target_acceptance - c.tolerance and self.k > c.min_k:
            self.k = max(c.min_k, self.k - c.step)
            self._window.clear()


def make_controller(config: SpeculationConfig) -> KController:
    if config.adaptive is None:
        return FixedK(config.k)
    return AdaptiveK(config.adaptive, config.k)
