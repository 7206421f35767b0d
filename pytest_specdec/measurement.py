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
from specdec.hf_engine import HFResult


@dataclass(frozen=True)
class Round:
    """One timed pass over all of a case's prompt batches."""

    results: tuple[GenerationResult | HFResult, ...]  # one per batch (transformers' modes: HFResult)
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

    acceptance_rate: float | None  # accepted / drafted over all batches; None for `ar` and where not exposed
    tokens_per_forward: float  # tokens a row advances per target forward, over all batches
    tokens_per_second: float  # of the fastest timed round: interference only ever slows a round down
    round_tokens_per_second: tuple[float, ...]
    new_tokens: int  # per round, all rows of all batches
    output_hash: str
    repeatable: bool  # every round produced the same tokens
    mean_k: float
    peak_memory_bytes: int  # device peak on CUDA/MPS, peak RSS of the process on CPU
    time_to_first_token_s: float | None  # median over rounds of the mean over batches (None: not measured)
    decoder_path: str
    verifier_backend: str

    @classmethod
    def from_rounds(cls, rounds: Sequence[Round]) -> Measurement:
        last = rounds[-1]
        metrics = [r.metrics for r in last.results]
        drafted = _total([m.drafted_tokens for m in metrics])  # None where transformers did not expose them
        accepted = _total([m.accepted_tokens for m in metrics])
        forwards = sum(m.target_forwards for m in metrics)
        advanced = sum(m.mean_tokens_per_forward * m.target_forwards for m in metrics)  # tokens per row, summed
        steps = sum(m.steps for m in metrics)
        peaks = [m.peak_device_memory_bytes for r in rounds for m in (x.metrics for x in r.results)]
        device_peaks = [p for p in peaks if p is not None]
        hashes = {output_hash(r.token_ids) for r in rounds}
        first_token = [[x.metrics.time_to_first_token_s for x in r.results] for r in rounds]
        return cls(
            acceptance_rate=accepted / drafted if drafted and accepted is not None else None,
            tokens_per_forward=advanced / forwards if forwards else 0.0,
            tokens_per_second=max(r.tokens_per_second for r in rounds),
            round_tokens_per_second=tuple(r.tokens_per_second for r in rounds),
            new_tokens=last.new_tokens,
            output_hash=output_hash(last.token_ids),
            repeatable=len(hashes) == 1,
            mean_k=sum(m.mean_k * m.steps for m in metrics) / steps if steps else 0.0,
            peak_memory_bytes=max(device_peaks) if device_peaks else max(m.peak_rss_bytes for m in metrics),
            time_to_first_token_s=(
                statistics.median(statistics.fmean(times) for times in first_token)  # type: ignore[arg-type]
                if all(t is not None for times in first_token for t in times)
                else None
            ),
            decoder_path=metrics[0].decoder_path,
            verifier_backend=metrics[0].verifier_backend,
        )


def _total(counts: Sequence[int | None]) -> int | None:
    """The sum, or None when any count is unknown."""
    return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)


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
