"""What a run measured: per step and per run, as typed objects that serialise to JSON.

Definitions (one step = one target verification forward after the prefill; it commits ``accepted + 1`` tokens to
each row that takes part: every row still generating. With per-row acceptance each row keeps its own accepted
prefix; in lockstep every row keeps the batch's shortest, see ``docs/batching.md``). Counts are summed over the
rows of a step (a *row-step*: one row in one step), so a batch of one counts as before:

- **mean accepted length** (tau in Spec-Bench, "acceptance length" in vLLM): tokens committed per row-step, the
  bonus (or recovered) token included, so the autoregressive baseline is exactly 1.0. vLLM's
  ``1 + accepted / drafts`` counts only steps that drafted; the two agree for a drafter that always drafts.
- **acceptance by position** (0-based draft position i): *conditional* = row-steps that accepted position i /
  row-steps that reached it (drafted at least i + 1 tokens and accepted every earlier one); *unconditional* =
  row-steps that accepted position i / row-steps that drafted at least i + 1 tokens. The raw counts are kept so
  that they add up exactly over batches.
- **token trees**: a tree step drafts (and verifies) ``tree_size`` nodes and accepts one root-to-node path, so
  ``drafted`` counts nodes and ``accepted`` the path's length; ``acceptance_rate`` is then accepted / nodes. Its
  positions are depths: a tree ``d`` deep offers positions 0..d-1 to ``PositionCounts`` (the path's i-th node is
  position i), so acceptance by position reads as acceptance by depth.
- **TTFT**: from the prefill's start to the first token read on the host.
- **ITL** (inter-token latency), as vLLM's serving benchmark counts it for speculative decoding: one sample per
  step, the time from the previous step's tokens (the prefill's first token for the first step) to this step's,
  however many tokens the step emitted; vLLM likewise takes one sample per streamed chunk. So ITL shows the
  latency a streaming reader waits between updates, and the percentiles are over steps, not tokens.
- **TPOT** (time per output token): decode time after the first token over the tokens after the first, for the
  mean row of a batch (each step adds its tokens per row taking part). The ITL samples add up to that decode time,
  so TPOT = sum(ITL) / (tokens of the mean row - 1).

Step times come from :class:`StepClock`, which adds no host sync to a step: on the CPU the host clock (the work is
synchronous), on MPS the host clock after the synchronisation each mark already makes, on CUDA events recorded in
the stream and read once the run is over. A step's tokens are timed when its verification finished, just before
the step's one host sync reads the number accepted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class StepMetrics:
    """One speculative step (one target verification forward)."""

    k: int  # K the controller asked for
    drafted: int  # tokens drafted this step, summed over its rows (per row at most K: fewer near the end of a
    # row's budget or when a drafter has none for it)
    accepted: int  # drafted tokens kept, summed over its rows
    emitted: int  # tokens committed this step, summed over its rows: accepted + rows (recovered or bonus tokens)
    draft_ms: float
    verify_ms: float  # the target forward and the acceptance decision
    itl_ms: float  # since the previous tokens (the prefill's first token, or the previous step's)
    tree_size: int = 0  # nodes of a token-tree proposal, all verified (= drafted); 0 for a chain
    tree_depth: int = 0  # the tree's depth (the most tokens it could commit before the bonus); 0 for a chain
    rows: int = 1  # rows that took part (rows of the batch still generating)
    row_drafted: tuple[int, ...] = ()  # per row that took part: tokens drafted for it (empty: one row, = drafted)
    row_accepted: tuple[int, ...] = ()  # per row that took part: drafted tokens it kept (empty: one row)

    @property
    def positions(self) -> int:
        """Draft positions this step offered a row: a chain's length, a tree's depth (a tree's position is its
        depth); the most over its rows."""
        return self.tree_depth if self.tree_size else max(self.row_drafted, default=self.drafted)

    def row_counts(self) -> list[tuple[int, int]]:
        """(draft positions offered, drafted tokens kept) of each row that took part."""
        if self.tree_size or not self.row_drafted:
            return [(self.positions, self.accepted)]
        return list(zip(self.row_drafted, self.row_accepted, strict=True))


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
    acceptance_rate: float | None  # None when nothing was drafted
    mean_tokens_per_forward: float  # tokens the mean row advances per target forward, prefill's first token included
    target_forwards: int
    draft_forwards: int
    mean_accepted_length: float | None  # tau: tokens committed per step, bonus included; None without steps
    accepted_by_position: tuple[int, ...]  # [i]: steps that accepted draft position i (see PositionCounts)
    reached_by_position: tuple[int, ...]  # [i]: steps that drafted position i after accepting every earlier one
    drafted_by_position: tuple[int, ...]  # [i]: steps that drafted position i
    acceptance_by_position: tuple[float | None, ...]  # conditional: accepted / reached
    acceptance_by_position_unconditional: tuple[float | None, ...]  # accepted / drafted
    time_to_first_token_s: float
    tpot_s: float | None  # time per output token after the first; None with fewer than two tokens
    itl_p50_s: float | None  # inter-token latency percentiles over the steps (one sample per step)
    itl_p90_s: float | None
    itl_p99_s: float | None
    total_time_s: float
    tokens_per_second: float  # new_tokens / total_time_s
    draft_time_s: float
    verify_time_s: float
    peak_device_memory_bytes: int | None  # None on CPU
    peak_rss_bytes: int
    synthetic: dict[str, Any] | None = None  # the synthetic policy's parameter as given; None: the output is real
    mean_tree_size: float | None = None  # mean nodes per tree step (steps that drafted a tree); None: no tree
    # Per row: seconds from the start (the prefill) to its last output token (empty for a slot batch, whose rows
    # serve one request after another). In a batch, rows that need fewer steps are done earlier.
    row_latency_s: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def position_counts(self) -> PositionCounts:
        return PositionCounts(self.accepted_by_position, self.reached_by_position, self.drafted_by_position)


@dataclass(frozen=True)
class PositionCounts:
    """Per draft position i (0-based: the (i + 1)-th drafted token of a step), counted over steps.

    Counted over row-steps (each row of each step): ``drafted[i]``: row-steps that drafted at least i + 1 tokens;
    ``reached[i]``: of those, the ones that accepted every position before i; ``accepted[i]``: the ones that
    accepted position i too. A row that drafted W tokens and accepted n adds 1 to ``drafted[:W]``,
    ``reached[:min(n + 1, W)]`` and ``accepted[:n]``; so ``sum(accepted)`` is the run's accepted tokens and
    ``sum(drafted)`` its drafted tokens. A tree step offers its depth d instead of W (position = depth):
    ``drafted[:d]``; there ``sum(drafted)`` counts depths, not nodes.
    """

    accepted: tuple[int, ...] = ()
    reached: tuple[int, ...] = ()
    drafted: tuple[int, ...] = ()

    @classmethod
    def of_steps(cls, steps: Sequence[StepMetrics]) -> PositionCounts:
        width = max((s.positions for s in steps), default=0)
        accepted, reached, drafted = [0] * width, [0] * width, [0] * width
        for step in steps:
            for offered, kept in step.row_counts():
                for i in range(offered):
                    drafted[i] += 1
                    reached[i] += i <= kept
                    accepted[i] += i < kept
        return cls(tuple(accepted), tuple(reached), tuple(drafted))

    def __add__(self, other: PositionCounts) -> PositionCounts:
        return PositionCounts(
            _add(self.accepted, other.accepted), _add(self.reached, other.reached), _add(self.drafted, other.drafted)
        )

    def conditional(self) -> tuple[float | None, ...]:
        """Acceptance at each position given that every earlier one was accepted (None where none reached it)."""
        return tuple(a / r if r else None for a, r in zip(self.accepted, self.reached, strict=True))

    def unconditional(self) -> tuple[float | None, ...]:
        """Acceptance at each position over the steps that drafted it (None where none did)."""
        return tuple(a / d if d else None for a, d in zip(self.accepted, self.drafted, strict=True))


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """Element-wise sum, the shorter one padded with zeros."""
    width = max(len(a), len(b))
    return tuple((a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(width))


def mean_accepted_length(steps: Sequence[StepMetrics]) -> float | None:
    """Tokens committed per row-step, the bonus token included (tau); None without steps."""
    return sum(s.emitted for s in steps) / sum(s.rows for s in steps) if steps else None


def time_per_output_token(steps: Sequence[StepMetrics], rows: int = 1) -> float | None:
    """Seconds per token after the first: the steps' summed ITL over the tokens they committed to the mean of the
    batch's ``rows`` rows (None if none)."""
    tokens = sum(s.emitted for s in steps) / rows
    return sum(s.itl_ms for s in steps) / 1000.0 / tokens if tokens else None


def row_latencies(
    time_to_first_token_s: float, steps: Sequence[StepMetrics], counts: Sequence[Sequence[int]], lengths: Sequence[int]
) -> tuple[float, ...]:
    """Per row: seconds from the start to its last output token, its ``lengths[b]``-th: the first token's time plus
    the inter-token latencies of the steps up to the first after which the row had committed that many.
    counts[i][b]: row b's new tokens after step i."""
    assert len(steps) == len(counts), "one count per row after each step"
    if not steps:
        return tuple(time_to_first_token_s for _ in lengths)
    itl_s = torch.tensor([0.0] + [step.itl_ms / 1000.0 for step in steps], dtype=torch.float64)
    elapsed = time_to_first_token_s + itl_s.cumsum(0)  # [S + 1]: when the prefill's, then each step's, were known
    needed = torch.tensor(lengths, dtype=torch.long)  # [B]
    reached = torch.tensor(counts, dtype=torch.long) >= needed[None, :]  # [S, B]
    # Row b is done at elapsed[i + 1], i its first step with enough tokens; at the prefill (0) if it needed one; at
    # the last step if it never had that many.
    done = torch.where(reached.any(0), reached.long().argmax(0) + 1, len(steps))  # [B]
    done = torch.where(needed <= 1, 0, done)
    return tuple(elapsed[done].tolist())


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between the closest ranks (NumPy's default, which vLLM's
    benchmark uses); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def itl_percentiles(itl_s: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p90 and p99 of inter-token latency samples (seconds)."""
    return percentile(itl_s, 50), percentile(itl_s, 90), percentile(itl_s, 99)


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
    drafted: int  # summed over the rows that took part
    accepted: int  # summed over the rows that took part
    tree_size: int = 0  # nodes of a tree proposal (0: a chain)
    tree_depth: int = 0
    row_drafted: tuple[int, ...] = ()  # per row that took part (empty: one row)
    row_accepted: tuple[int, ...] = ()
    marks: tuple[int, int, int] = field(default=(0, 0, 0))  # start, drafted, verified
    previous: int = 0  # the mark at which the tokens before this step's were known (prefill's or previous step's)
    share: int = 1  # steps that ran as one between these marks (an autoregressive chunk): each gets 1/share
    counts: tuple[int, ...] = ()  # per row: new tokens committed after this step (past an unread EOS too)

    def resolve(self, clock: StepClock) -> StepMetrics:
        start, drafted, verified = self.marks
        rows = max(1, len(self.row_drafted))
        return StepMetrics(
            k=self.k,
            drafted=self.drafted,
            accepted=self.accepted,
            emitted=self.accepted + rows,
            draft_ms=clock.elapsed_ms(start, drafted) / self.share,
            verify_ms=clock.elapsed_ms(drafted, verified) / self.share,
            itl_ms=clock.elapsed_ms(self.previous, verified) / self.share,
            tree_size=self.tree_size,
            tree_depth=self.tree_depth,
            rows=rows,
            row_drafted=self.row_drafted,
            row_accepted=self.row_accepted,
        )
