"""What a run measured: per step and per run, as typed objects that serialise to JSON."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class StepMetrics:
    """One speculative step (one target verification forward)."""

    k: int  # K the controller asked for
    drafted: int  # tokens drafted this step (at most K: fewer near the end of the budget or when a drafter has none)
    accepted: int  # drafted tokens kept (min over the batch's rows)
    emitted: int  # tokens committed this step: accepted + 1 (the recovered or bonus token)
    draft_ms: float
    verify_ms: float  # the target forward and the acceptance decision


@dataclass(frozen=True)
class RunMetrics:
    """One generation run. ``acceptance_rate`` is accepted / drafted and never counts the bonus token."""

    target: str
    draft: str | None  # what drafted (a model's name, or a model-free drafter's description); None: autoregressive
    draft_method: str | None  # "model", "ngram", "suffix", "layerskip", ...; None: autoregressive
    decoder_path: str  # "generic" (transformers modules) or the fast path that ran
    verifier_backend: str  # "torch" or "triton"
    policy: str
    k: int | None  # fixed K as it could apply (at most max_new_tokens - 1), or None when adaptive
    adaptive_k: bool
    mean_k: float  # mean K the controller asked for over the steps
    mean_drafted: float  # mean tokens actually drafted per step (a model-free drafter may draft fewer than K)
    device: str
    dtype: str
    batch_size: int
    prompt_tokens: int  # padded prompt length
    new_tokens: int  # generated tokens over all rows (each row cut at its end of sequence)
    steps: int  # target forwards after prefill
    drafted_tokens: int
    accepted_tokens: int
    # Per draft position i = 1..(largest K), counted over steps (a batch's step counts once):
    drafted_by_position: list[int]  # steps that drafted position i
    reached_by_position: list[int]  # steps that drafted position i with every earlier position accepted
    accepted_by_position: list[int]  # steps that accepted position i (and so every earlier one)
    acceptance_rate: float | None  # None when nothing was drafted
    mean_tokens_per_forward: float  # tokens one row advances per target forward, prefill's first token included
    target_forwards: int
    draft_forwards: int
    time_to_first_token_s: float
    total_time_s: float
    tokens_per_second: float  # new_tokens / total_time_s
    draft_time_s: float
    verify_time_s: float
    peak_device_memory_bytes: int | None  # None on CPU
    peak_rss_bytes: int
    synthetic: dict[str, Any] | None = None  # the synthetic policy's parameter as given; None: the output is real

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def position_counts(steps: list[StepMetrics], positions: int) -> tuple[list[int], list[int], list[int]]:
    """(drafted, reached, accepted) per draft position 1..``positions`` over ``steps``: conditional acceptance at i
    is accepted[i] / reached[i], unconditional (vLLM's per-position rate) accepted[i] / drafted[i]."""
    drafted, reached, accepted = [0] * positions, [0] * positions, [0] * positions
    for step in steps:
        for i in range(min(step.drafted, positions)):
            drafted[i] += 1
            reached[i] += i <= step.accepted
            accepted[i] += i < step.accepted
    return drafted, reached, accepted


class StepClock:
    """Times regions of the decode loop without forcing host syncs.

    On CUDA it records events in the stream and reads them once at the end (`durations_ms`); elsewhere it reads the
    host clock (CPU work is synchronous; MPS is synchronised at each mark).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._marks: list[Any] = []

    def mark(self) -> int:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            if self.device.type == "mps":
                torch.mps.synchronize()
            self._marks.append(time.perf_counter())
        return len(self._marks) - 1

    def elapsed_ms(self, start: int, end: int) -> float:
        a, b = self._marks[start], self._marks[end]
        if self.device.type == "cuda":
            return float(a.elapsed_time(b))
        return (b - a) * 1000.0

    def finish(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass
class StepRecord:
    """Marks of one step, turned into :class:`StepMetrics` once the clock can be read."""

    k: int
    drafted: int
    accepted: int
    marks: tuple[int, int, int] = field(default=(0, 0, 0))  # start, drafted, verified

    def resolve(self, clock: StepClock) -> StepMetrics:
        start, drafted, verified = self.marks
        return StepMetrics(
            k=self.k,
            drafted=self.drafted,
            accepted=self.accepted,
            emitted=self.accepted + 1,
            draft_ms=clock.elapsed_ms(start, drafted),
            verify_ms=clock.elapsed_ms(drafted, verified),
        )
