"""What one case measured, aggregated over its prompt batches and rounds, and the record a baseline keeps of it."""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pytest_specdec.machine import Environment
from specdec.engine import GenerationResult
from specdec.hf_engine import HFResult, HFRunMetrics
from specdec.metrics import PositionCounts, RunMetrics, StepMetrics, itl_percentiles

if TYPE_CHECKING:
    from pytest_specdec.load import LoadStats


@dataclass(frozen=True)
class Round:
    """One timed pass over all of a case's prompt batches."""

    results: tuple[GenerationResult | HFResult, ...]  # one per batch (transformers' modes: HFResult)
    seconds: float  # host clock around the pass, device synchronised before it stops
    categories: tuple[str | None, ...]  # per batch: its prompts' category (None for a set without categories)
    batch_seconds: tuple[float, ...]  # per batch: host clock around its generate call (which ends synchronised)

    @property
    def new_tokens(self) -> int:
        return sum(r.metrics.new_tokens for r in self.results)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def token_ids(self) -> list[list[list[int]]]:  # [batch][row][token]
        return [r.token_ids for r in self.results]

    def of_category(self, category: str) -> list[tuple[GenerationResult | HFResult, float]]:
        """The results of the batches of ``category`` with their seconds."""
        batches = zip(self.results, self.categories, self.batch_seconds, strict=True)
        return [(result, seconds) for result, label, seconds in batches if label == category]


def output_hash(token_ids: Sequence[Any]) -> str:
    """A short hash of generated token ids (identical outputs, identical hash)."""
    return hashlib.sha256(json.dumps(token_ids, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Tally:
    """Counts summed over generation runs (batches), of which acceptance, tokens per forward and tau are ratios: so
    they aggregate exactly, over batches as over categories."""

    drafted: int | None  # drafted tokens (None: transformers did not expose them)
    accepted: int | None  # accepted drafted tokens (None: likewise)
    steps: int  # target forwards after the prefill
    row_steps: int  # rows that took part in each step, summed (= steps for batches of one)
    target_forwards: int  # steps + one prefill per batch
    advanced: int  # tokens a row advanced, prefill's first token included, summed over batches
    positions: PositionCounts  # per draft position, summed over batches

    @classmethod
    def of(cls, runs: Iterable[GenerationResult | HFResult]) -> Tally:
        results = list(runs)  # read twice below (a generator would be empty the second time)
        metrics = [r.metrics for r in results]
        return cls(
            drafted=_total([m.drafted_tokens for m in metrics]),
            accepted=_total([m.accepted_tokens for m in metrics]),
            steps=sum(m.steps for m in metrics),
            row_steps=sum(_row_steps(r) for r in results),
            target_forwards=sum(m.target_forwards for m in metrics),
            advanced=sum(round(m.mean_tokens_per_forward * m.target_forwards) for m in metrics),
            positions=sum((_positions(m) for m in metrics), PositionCounts()),
        )

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted and self.accepted is not None else None

    @property
    def tokens_per_forward(self) -> float:
        return self.advanced / self.target_forwards if self.target_forwards else 0.0

    @property
    def mean_accepted_length(self) -> float | None:
        """Tokens committed per row-step, bonus included: each row of a step commits its accepted tokens + 1."""
        if not self.row_steps or self.accepted is None:
            return None
        return (self.accepted + self.row_steps) / self.row_steps


@dataclass(frozen=True)
class CategoryMeasurement:
    """A case's metrics over the batches of one prompt category (batches never mix categories)."""

    category: str
    prompts: int  # distinct prompts of the category (a batch filled by cycling repeats some)
    tally: Tally  # of the last round
    tokens_per_second: float  # the category's tokens over its batches' seconds, in the fastest round for it

    def to_dict(self, speedup: float | None) -> dict[str, Any]:
        """The category's entry of ``by_category``."""
        return {
            "acceptance_rate": self.tally.acceptance_rate,
            "tokens_per_forward": self.tally.tokens_per_forward,
            "mean_accepted_length": self.tally.mean_accepted_length,
            "speedup": speedup,
            "tokens_per_second": self.tokens_per_second,
            "prompts": self.prompts,
        }


@dataclass(frozen=True)
class Measurement:
    """A case's metrics. Deterministic ones come from the last round (all rounds agree when ``repeatable``); the
    definitions of tau, acceptance by position, TTFT, TPOT and ITL are those of :mod:`specdec.metrics`."""

    acceptance_rate: float | None  # accepted / drafted over all batches; None for `ar` and where not exposed
    tokens_per_forward: float  # tokens a row advances per target forward, over all batches
    tokens_per_second: float  # of the fastest timed round: interference only ever slows a round down
    round_tokens_per_second: tuple[float, ...]
    new_tokens: int  # per round, all rows of all batches
    output_hash: str
    repeatable: bool  # every round produced the same tokens
    mean_k: float
    peak_memory_bytes: int  # device peak on CUDA/MPS, peak RSS of the process on CPU
    decoder_path: str
    verifier_backend: str
    mean_accepted_length: float | None  # tau over all batches' steps; None when no step ran
    positions: PositionCounts  # acceptance counts per draft position over all batches
    ttft_s: float | None  # median over rounds of the mean over batches (None: not measured, transformers' modes)
    tpot_s: float | None  # median over rounds of (the round's decode seconds / its tokens after the first)
    itl_p50_s: float | None  # percentiles of every step's inter-token latency in every timed round
    itl_p90_s: float | None
    itl_p99_s: float | None
    by_category: tuple[CategoryMeasurement, ...] = ()  # in the suite's category order; () without categories
    paired_speedups: tuple[float, ...] = ()  # per timed round: its tokens/s over the autoregressive round just before
    steady_speedup: float | None = None  # steady_seconds of the paired autoregressive rounds over this case's

    @property
    def paired_speedup(self) -> float | None:
        """The speedup a case reports and gating compares (None without paired rounds): the ratio of the steady
        times, or the median of the rounds' ratios where a round's steps did not repeat."""
        if self.steady_speedup is not None:
            return self.steady_speedup
        return statistics.median(self.paired_speedups) if self.paired_speedups else None

    @property
    def acceptance_by_position(self) -> tuple[float | None, ...]:
        return self.positions.conditional()

    @property
    def acceptance_by_position_unconditional(self) -> tuple[float | None, ...]:
        return self.positions.unconditional()

    step_seconds: float | None = None  # mean draft + verification time of a step, in the fastest round (None: ar)
    # What it was computed from, so that a later attempt can pool its rounds with these (pooled_with):
    rounds: tuple[Round, ...] = field(default=(), repr=False, compare=False)
    reference_rounds: tuple[Round, ...] = field(default=(), repr=False, compare=False)
    category_prompts: Mapping[str, int] | None = field(default=None, repr=False, compare=False)
    serving: LoadStats | None = None  # a serving case's latencies and throughputs (engine openai)

    def pooled_with(self, later: Measurement) -> Measurement:
        """This measurement and ``later`` (a later attempt of the same case) as one: every timed round of both, so
        the steady time takes each step's fastest time over all their rounds. A serving case keeps no engine rounds:
        its per-round speedups pool (their median is its speedup), and its fastest round counts."""
        if self.serving is not None and later.serving is not None:
            return replace(
                later if later.tokens_per_second >= self.tokens_per_second else self,
                paired_speedups=self.paired_speedups + later.paired_speedups,
                round_tokens_per_second=self.round_tokens_per_second + later.round_tokens_per_second,
            )
        return Measurement.from_rounds(
            self.rounds + later.rounds, self.category_prompts, self.reference_rounds + later.reference_rounds
        )

    @classmethod
    def from_rounds(
        cls,
        rounds: Sequence[Round],
        category_prompts: Mapping[str, int] | None = None,
        reference_rounds: Sequence[Round] = (),
    ) -> Measurement:
        """``category_prompts``: the prompts of each category ({} or None for a set without categories);
        ``reference_rounds`` (one per round, in order): the paired autoregressive ones."""
        last = rounds[-1]
        metrics = [r.metrics for r in last.results]
        tally = Tally.of(last.results)
        peaks = [m.peak_device_memory_bytes for r in rounds for m in (x.metrics for x in r.results)]
        device_peaks = [p for p in peaks if p is not None]
        hashes = {output_hash(r.token_ids) for r in rounds}
        itl_p50, itl_p90, itl_p99 = itl_percentiles(
            [step.itl_ms / 1000.0 for r in rounds for result in r.results for step in step_timings(result)]
        )
        tpots = [_round_tpot(r.results) for r in rounds]
        known_tpots = [t for t in tpots if t is not None]
        fastest = [x.metrics for x in max(rounds, key=lambda r: r.tokens_per_second).results]
        fastest_steps = sum(m.steps for m in fastest)
        step_time = sum(m.draft_time_s + m.verify_time_s for m in fastest if isinstance(m, RunMetrics))
        first_token = [[x.metrics.time_to_first_token_s for x in r.results] for r in rounds]
        return cls(
            rounds=tuple(rounds),
            reference_rounds=tuple(reference_rounds),
            category_prompts=category_prompts,
            acceptance_rate=tally.acceptance_rate,
            tokens_per_forward=tally.tokens_per_forward,
            tokens_per_second=max(r.tokens_per_second for r in rounds),
            round_tokens_per_second=tuple(r.tokens_per_second for r in rounds),
            new_tokens=last.new_tokens,
            output_hash=output_hash(last.token_ids),
            repeatable=len(hashes) == 1,
            mean_k=sum(m.mean_k * m.steps for m in metrics) / tally.steps if tally.steps else 0.0,
            peak_memory_bytes=max(device_peaks) if device_peaks else max(m.peak_rss_bytes for m in metrics),
            decoder_path=metrics[0].decoder_path,
            verifier_backend=metrics[0].verifier_backend,
            mean_accepted_length=tally.mean_accepted_length,
            positions=tally.positions,
            ttft_s=(
                statistics.median(statistics.fmean(times) for times in first_token)  # type: ignore[arg-type]
                if all(t is not None for times in first_token for t in times)
                else None
            ),
            tpot_s=statistics.median(known_tpots) if known_tpots else None,
            itl_p50_s=itl_p50,
            itl_p90_s=itl_p90,
            itl_p99_s=itl_p99,
            by_category=tuple(
                _category(rounds, category, prompts) for category, prompts in (category_prompts or {}).items()
            ),
            paired_speedups=tuple(
                r.tokens_per_second / a.tokens_per_second
                for r, a in zip(rounds, reference_rounds, strict=True)
                if a.tokens_per_second > 0
            )
            if len(reference_rounds) == len(rounds)
            else (),
            steady_speedup=_steady_speedup(rounds, reference_rounds),
            step_seconds=step_time / fastest_steps if fastest_steps and step_time and tally.drafted else None,
        )

    def category_report(self, reference: Measurement | None) -> dict[str, dict[str, Any]]:
        """``by_category``: per category its metrics, and its speedup over ``reference`` (the same run's
        autoregressive case) on the same category's prompts; None without a reference."""
        theirs = {c.category: c for c in reference.by_category} if reference is not None else {}
        report = {}
        for mine in self.by_category:
            other = theirs.get(mine.category)
            speedup = (
                mine.tokens_per_second / other.tokens_per_second
                if other is not None and other.tokens_per_second > 0
                else None
            )
            report[mine.category] = mine.to_dict(speedup)
        return report


def _category(rounds: Sequence[Round], category: str, prompts: int) -> CategoryMeasurement:
    speeds = []
    for r in rounds:
        batches = r.of_category(category)
        seconds = sum(s for _, s in batches)
        tokens = sum(result.metrics.new_tokens for result, _ in batches)
        speeds.append(tokens / seconds if seconds > 0 else 0.0)
    tally = Tally.of(result for result, _ in rounds[-1].of_category(category))
    return CategoryMeasurement(category=category, prompts=prompts, tally=tally, tokens_per_second=max(speeds))


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
        steps = [step_timings(run) for run in runs]
        if not steps[0] or len({len(s) for s in steps}) != 1:  # no step timings, or rounds that differ
            return None
        step_seconds = [[s.itl_ms / 1000.0 for s in run_steps] for run_steps in steps]  # [round][step], whole steps
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


def step_timings(result: GenerationResult | HFResult) -> list[StepMetrics]:
    """The run's per-step timings ([] for transformers' modes, which expose none)."""
    steps = getattr(result, "steps", None)  # GenerationResult.steps; an HFResult has none
    return steps if isinstance(steps, list) else []


def _row_steps(result: GenerationResult | HFResult) -> int:
    """Rows that took part in each of the run's steps, summed (its steps where it exposes no per-step timings)."""
    steps = step_timings(result)
    return sum(s.rows for s in steps) if steps else result.metrics.steps


def _round_tpot(results: Sequence[GenerationResult | HFResult]) -> float | None:
    """TPOT over a round's runs: their summed ITL over the tokens of each run's mean row after the first."""
    seconds = sum(s.itl_ms for result in results for s in step_timings(result)) / 1000.0
    tokens = sum(sum(s.emitted for s in step_timings(r)) / len(r.token_ids) for r in results)
    return seconds / tokens if tokens else None


def _positions(metrics: RunMetrics | HFRunMetrics) -> PositionCounts:
    """Per-position counts of one run (empty where transformers did not expose them)."""
    if isinstance(metrics, RunMetrics):
        return metrics.position_counts
    counts = (metrics.accepted_by_position, metrics.reached_by_position, metrics.drafted_by_position)
    if any(c is None for c in counts):
        return PositionCounts()
    accepted, reached, drafted = (tuple(c or ()) for c in counts)
    return PositionCounts(accepted, reached, drafted)


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
    synthetic: bool = False  # synthetic acceptance: its output is not the target's, so its hash is never gated
    # the speedups of the updates that recorded this entry at one commit (``speedup`` is their median): pooled by
    # ``baselines.write_baselines``; () in a run's own record
    speedup_samples: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseRecord:
        values: dict[str, Any] = {name: data.get(name) for name in cls.__dataclass_fields__}
        values["environment"] = Environment.from_dict(data.get("environment") or {})
        values["greedy"] = bool(values["greedy"])
        values["synthetic"] = bool(values["synthetic"])
        values["speedup_samples"] = tuple(float(x) for x in values["speedup_samples"] or ())
        return cls(**values)
