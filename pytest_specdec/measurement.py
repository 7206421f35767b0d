"""What one case measured, aggregated over its prompt batches and rounds, and the record a baseline keeps of it."""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pytest_specdec.machine import Environment
from specdec.engine import GenerationResult


@dataclass(frozen=True)
class Round:
    """One timed pass over all of a case's prompt batches."""

    results: tuple[GenerationResult, ...]  # one per batch
    seconds: float  # host clock around the pass, device synchronised before it stops

    @property
    def new_tokens(self) -> int:
        return sum(r.metrics.new_tokens for r in self.results)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def token_ids(self) -> list[list[list[int]]]:  # [batch][row][token]
        return [r.token_ids for r in self.results]


def output_hash(token_ids: Sequence[Any]) -> str:
    """A short hash of generated token ids (identical outputs, identical hash)."""
    return hashlib.sha256(json.dumps(token_ids, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Measurement:
    """A case's metrics. Deterministic ones come from the last round (all rounds agree when ``repeatable``)."""

    acceptance_rate: float | None  # accepted / drafted over all batches; None for the autoregressive case
    tokens_per_forward: float  # tokens a row advances per target forward, over all batches
    tokens_per_second: float  # of the fastest timed round: interference only ever slows a round down
    round_tokens_per_second: tuple[float, ...]
    new_tokens: int  # per round, all rows of all batches
    output_hash: str
    repeatable: bool  # every round produced the same tokens
    mean_k: float
    peak_memory_bytes: int  # device peak on CUDA/MPS, peak RSS of the process on CPU
    time_to_first_token_s: float  # median over rounds of the mean over batches
    decoder_path: str
    verifier_backend: str
    paired_speedups: tuple[float, ...] = ()  # per timed round: its tokens/s over the autoregressive round just before
    steady_speedup: float | None = None  # steady_seconds of the paired autoregressive rounds over this case's

    @property
    def paired_speedup(self) -> float | None:
        """The speedup a case reports and gating compares (None without paired rounds): the ratio of the steady
        times, or the median of the rounds' ratios where a round's steps did not repeat."""
        if self.steady_speedup is not None:
            return self.steady_speedup
        return statistics.median(self.paired_speedups) if self.paired_speedups else None

    @classmethod
    def from_rounds(cls, rounds: Sequence[Round], reference_rounds: Sequence[Round] = ()) -> Measurement:
        """Aggregate ``rounds``; ``reference_rounds`` (one per round, in order) are the paired autoregressive ones."""
        last = rounds[-1]
        metrics = [r.metrics for r in last.results]
        drafted = sum(m.drafted_tokens for m in metrics)
        accepted = sum(m.accepted_tokens for m in metrics)
        forwards = sum(m.target_forwards for m in metrics)
        advanced = sum(m.mean_tokens_per_forward * m.target_forwards for m in metrics)  # tokens per row, summed
        steps = sum(m.steps for m in metrics)
        peaks = [m.peak_device_memory_bytes for r in rounds for m in (x.metrics for x in r.results)]
        device_peaks = [p for p in peaks if p is not None]
        hashes = {output_hash(r.token_ids) for r in rounds}
        return cls(
            acceptance_rate=accepted / drafted if drafted else None,
            tokens_per_forward=advanced / forwards if forwards else 0.0,
            tokens_per_second=max(r.tokens_per_second for r in rounds),
            round_tokens_per_second=tuple(r.tokens_per_second for r in rounds),
            new_tokens=last.new_tokens,
            output_hash=output_hash(last.token_ids),
            repeatable=len(hashes) == 1,
            mean_k=sum(m.mean_k * m.steps for m in metrics) / steps if steps else 0.0,
            peak_memory_bytes=max(device_peaks) if device_peaks else max(m.peak_rss_bytes for m in metrics),
            time_to_first_token_s=statistics.median(
                statistics.fmean(x.metrics.time_to_first_token_s for x in r.results) for r in rounds
            ),
            decoder_path=metrics[0].decoder_path,
            verifier_backend=metrics[0].verifier_backend,
            paired_speedups=tuple(
                r.tokens_per_second / a.tokens_per_second
                for r, a in zip(rounds, reference_rounds, strict=True)
                if a.tokens_per_second > 0
            )
            if len(reference_rounds) == len(rounds)
            else (),
            steady_speedup=_steady_speedup(rounds, reference_rounds),
        )


def steady_seconds(rounds: Sequence[Round]) -> float | None:
    """The time of one round without interference: per batch, the sum over steps of each step's fastest time across
    rounds, plus the fastest time spent outside the steps (prefill, setup). None unless every round took the same
    number of steps per batch (deterministic runs repeat their steps exactly; then step i of every round did the
    same work).

    Interference on a shared machine only ever adds time, and it comes in bursts shorter than a round: a round with
    no burst in it is rare on a busy 2-core machine, a step with none in at least one of five rounds is not.
    """
    if not rounds:
        return None
    total = 0.0
    for batch in range(len(rounds[0].results)):
        runs = [r.results[batch] for r in rounds]  # this batch in every round
        if len({len(run.steps) for run in runs}) != 1:
            return None
        step_seconds = [[(s.draft_ms + s.verify_ms) / 1000.0 for s in run.steps] for run in runs]  # [round][step]
        outside = min(run.metrics.total_time_s - sum(steps) for run, steps in zip(runs, step_seconds, strict=True))
        total += max(outside, 0.0) + sum(min(column) for column in zip(*step_seconds, strict=True))
    return total


def _steady_speedup(rounds: Sequence[Round], reference_rounds: Sequence[Round]) -> float | None:
    """Tokens/s of ``rounds`` over tokens/s of ``reference_rounds``, each from its steady time (None if either
    has none)."""
    if not rounds or len(reference_rounds) != len(rounds):
        return None
    mine, theirs = steady_seconds(rounds), steady_seconds(reference_rounds)
    if not mine or not theirs:
        return None
    return (rounds[-1].new_tokens / mine) / (reference_rounds[-1].new_tokens / theirs)


@dataclass(frozen=True)
class CaseRecord:
    """What a baseline file keeps of a case, and what gating compares."""

    digest: str  # of the case's definition: a changed suite entry makes its baseline stale
    greedy: bool
    acceptance_rate: float | None
    tokens_per_forward: float
    tokens_per_second: float
    speedup: float | None  # over the same run's autoregressive case; None for that case itself
    output_hash: str
    new_tokens: int
    peak_memory_bytes: int | None
    environment: Environment
    commit: str | None = None
    recorded_at: str | None = None  # ISO time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseRecord:
        values: dict[str, Any] = {name: data.get(name) for name in cls.__dataclass_fields__}
        values["environment"] = Environment.from_dict(data.get("environment") or {})
        values["greedy"] = bool(values["greedy"])
        return cls(**values)
