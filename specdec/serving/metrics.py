"""The server's counters, gauges and histograms, rendered in the Prometheus text format (``GET /metrics``).

Names carry the ``specdec_`` prefix. Acceptance per draft position is two counters labelled by position (drafted at
that position, accepted there), so any window of a scrape series gives the rate; latencies are histograms in seconds.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket (not cumulative), then +Inf
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            label = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{label}"}} {running}')
        return [*out, f"{name}_sum {self.total:.6f}", f"{name}_count {self.count}"]


@dataclass
class ServerMetrics:
    """Everything ``/metrics`` shows; updated from the event loop and the worker thread (under one lock)."""

    requests: dict[str, int] = field(default_factory=dict)  # finished requests by outcome: ok, error, cancelled
    running: int = 0  # admitted requests (generating or waiting for the engine)
    waiting: int = 0  # requests queued beyond --max-concurrency
    prompt_tokens: int = 0
    generation_tokens: int = 0
    drafted: list[int] = field(default_factory=list)  # per draft position: steps that drafted it
    accepted: list[int] = field(default_factory=list)  # per draft position: steps that accepted it
    target_forwards: int = 0
    request_steps: int = 0  # per target forward, the requests that took part in it (a batch counts each of its rows)
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def finished(self, outcome: str) -> None:
        with self.lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def add_tokens(self, prompt: int, generated: int) -> None:
        with self.lock:
            self.prompt_tokens += prompt
            self.generation_tokens += generated

    def add_step(self, drafted: Sequence[int], accepted: Sequence[int]) -> None:
        """One speculative step (one target forward): per row that took part, ``drafted[i]`` tokens proposed
        (positions 1..drafted[i]), the first ``accepted[i]`` kept."""
        with self.lock:
            self.target_forwards += 1
            self.request_steps += len(drafted)
            for row_drafted, row_accepted in zip(drafted, accepted, strict=True):
                while len(self.drafted) < row_drafted:
                    self.drafted.append(0)
                    self.accepted.append(0)
                for position in range(row_drafted):
                    self.drafted[position] += 1
                    if position < row_accepted:
                        self.accepted[position] += 1

    def add_resumed(self, requests: int) -> None:
        """A forward that re-read ``requests`` running requests (their batch grew): each advanced one token in it,
        so it counts as a step of each, drafting nothing."""
        with self.lock:
            self.target_forwards += 1
            self.request_steps += requests

    def render(self) -> str:
        with self.lock:
            lines = [
                "# HELP specdec_requests_total Finished requests by outcome.",
                "# TYPE specdec_requests_total counter",
                *(f'specdec_requests_total{{outcome="{k}"}} {v}' for k, v in sorted(self.requests.items())),
                "# HELP specdec_requests_running Admitted requests (generating or waiting for the engine).",
                "# TYPE specdec_requests_running gauge",
                f"specdec_requests_running {self.running}",
                "# HELP specdec_requests_waiting Requests queued beyond --max-concurrency.",
                "# TYPE specdec_requests_waiting gauge",
                f"specdec_requests_waiting {self.waiting}",
                "# HELP specdec_prompt_tokens_total Prompt tokens of admitted requests.",
                "# TYPE specdec_prompt_tokens_total counter",
                f"specdec_prompt_tokens_total {self.prompt_tokens}",
                "# HELP specdec_generation_tokens_total Tokens generated.",
                "# TYPE specdec_generation_tokens_total counter",
                f"specdec_generation_tokens_total {self.generation_tokens}",
                "# HELP specdec_target_forwards_total Target forwards of decoding steps (one per speculative step).",
                "# TYPE specdec_target_forwards_total counter",
                f"specdec_target_forwards_total {self.target_forwards}",
                "# HELP specdec_request_steps_total Decoding steps of requests: a batched forward counts once per "
                "request in it (generated tokens per request step is the mean accepted length plus prefills).",
                "# TYPE specdec_request_steps_total counter",
                f"specdec_request_steps_total {self.request_steps}",
                "# HELP specdec_draft_tokens_total Drafted tokens, by draft position (1 = first drafted).",
                "# TYPE specdec_draft_tokens_total counter",
                *(f'specdec_draft_tokens_total{{position="{i + 1}"}} {n}' for i, n in enumerate(self.drafted)),
                "# HELP specdec_accepted_tokens_total Accepted drafted tokens, by draft position.",
                "# TYPE specdec_accepted_tokens_total counter",
                *(f'specdec_accepted_tokens_total{{position="{i + 1}"}} {n}' for i, n in enumerate(self.accepted)),
                "# HELP specdec_time_to_first_token_seconds From a request's arrival to its first token.",
                "# TYPE specdec_time_to_first_token_seconds histogram",
                *self.ttft.lines("specdec_time_to_first_token_seconds"),
                "# HELP specdec_inter_token_latency_seconds Between a request's successive tokens (a step's tokens "
                "share its time).",
                "# TYPE specdec_inter_token_latency_seconds histogram",
                *self.itl.lines("specdec_inter_token_latency_seconds"),
            ]
        return "\n".join(lines) + "\n"
