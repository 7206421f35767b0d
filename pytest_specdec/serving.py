"""Running a serving case (``engine: openai``): rounds of streamed requests against its endpoint, through
pytest-benchmark's fixture when there is one, each round of a speculative server's case paired with one round of
the autoregressive server's case at the same concurrency (outside the clock, through ``setup``), as engine cases
are paired (``runner.measure``).

Its speedup is the median over timed rounds of the ratio of the two rounds' output tokens/s. Acceptance per draft
position, tau and tokens per target forward come from the server's ``/metrics`` counters, read before and after
the case (None, and 0 tokens per forward, when the endpoint exposes none: another server).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from pytest_specdec.cases import Case
from pytest_specdec.endpoints import EndpointError, Server, ServerPool
from pytest_specdec.load import Counters, LoadError, LoadPlan, LoadRound, LoadStats, run_round, scrape_counters
from pytest_specdec.load import served_model as served_model_name
from pytest_specdec.measurement import Measurement, output_hash
from pytest_specdec.runner import run_paired, timed_rounds
from specdec.metrics import PositionCounts


class ServingError(Exception):
    """A serving case that cannot run: the message names the endpoint (and a started server's log)."""


@dataclass(frozen=True)
class Endpoint:
    """Where one case sends its requests."""

    base_url: str  # http://HOST:PORT/v1
    model: str  # what requests name (the first model GET /v1/models lists)
    server: Server | None  # the `specdec serve` the plugin started; None for a suite's `endpoint`


def resolve(case: Case, servers: ServerPool) -> Endpoint:
    """The case's endpoint, starting its server if it has none yet; raises :class:`ServingError`."""
    serving = case.serving
    assert serving is not None
    try:
        if serving.serve is not None:
            base_url, server = servers.url(serving.serve)
        else:
            assert serving.endpoint is not None
            base_url, server = serving.endpoint, None
        return Endpoint(base_url, served_model_name(base_url), server)
    except (EndpointError, LoadError) as error:
        raise ServingError(f"{case.id}: {error}") from None


def plan(case: Case, endpoint: Endpoint) -> LoadPlan:
    serving = case.serving
    assert serving is not None
    prompts = case.prompts.materialize(0)  # texts or token ids (random ids are refused for serving suites)
    return LoadPlan(
        base_url=endpoint.base_url,
        model=endpoint.model,
        prompts=tuple(itertools.islice(itertools.cycle(prompts), serving.requests)),
        max_tokens=case.generation.max_new_tokens,
        temperature=case.generation.temperature,
        seed=case.generation.seed,
        concurrency=serving.concurrency,
        request_rate=serving.request_rate,
        request_timeout_s=serving.request_timeout_s,
        round_timeout_s=serving.case_timeout_s,
    )


def _round(case: Case, endpoint: Endpoint, load: LoadPlan) -> LoadRound:
    try:
        return run_round(load)
    except LoadError as error:
        died = endpoint.server.died() if endpoint.server is not None else None
        log = f" (server log: {endpoint.server.log})" if endpoint.server is not None else ""
        raise ServingError(f"{case.id}: {error}{log}" + (f"\n{died}" if died else "")) from None


def measure_serving(
    case: Case, servers: ServerPool, benchmark: Any | None = None, reference: Case | None = None
) -> Measurement:
    """``case.warmup_rounds`` untimed and ``case.rounds`` timed rounds of all its requests (each round after one of
    ``reference``, the autoregressive server's case, when given); raises :class:`ServingError`."""
    endpoint = resolve(case, servers)
    load = plan(case, endpoint)
    paired = resolve(reference, servers) if reference is not None else None
    paired_load = plan(reference, paired) if reference is not None and paired is not None else None
    rounds: list[LoadRound] = []
    reference_rounds: list[LoadRound] = []

    def one_round() -> None:
        rounds.append(_round(case, endpoint, load))

    def reference_round() -> None:
        if reference is not None and paired is not None and paired_load is not None:
            reference_rounds.append(_round(reference, paired, paired_load))

    before = scrape_counters(endpoint.base_url)
    run_paired(case, benchmark, one_round, reference_round)
    after = scrape_counters(endpoint.base_url)
    counters = after.since(before) if before is not None and after is not None else None
    timed, theirs = timed_rounds(case, rounds, reference_rounds)
    return _measurement(case, timed, theirs, counters)


def _measurement(
    case: Case, timed: list[LoadRound], reference: list[LoadRound], counters: Counters | None
) -> Measurement:
    serving = case.serving
    assert serving is not None
    stats = LoadStats.of(timed, serving.concurrency, serving.request_rate)
    hashes = {output_hash([r.text for r in one.requests]) for one in timed}
    drafted = sum(counters.drafted) if counters is not None else 0
    accepted = sum(counters.accepted) if counters is not None else 0
    forwards = counters.request_steps if counters is not None else 0  # per request: a batch's forward once each
    return Measurement(
        acceptance_rate=accepted / drafted if drafted else None,
        # tokens a request advances per target forward, its prefill counted (as engine cases count them)
        tokens_per_forward=counters.generation_tokens / (forwards + counters.requests)
        if counters is not None and forwards + counters.requests > 0
        else 0.0,
        tokens_per_second=stats.output_throughput,
        round_tokens_per_second=tuple(one.tokens_per_second for one in timed),
        new_tokens=timed[-1].tokens,
        output_hash=output_hash([r.text for r in timed[-1].requests]),
        repeatable=len(hashes) == 1,
        mean_k=float(case.speculation.k) if case.speculation is not None else 0.0,
        peak_memory_bytes=0,  # the server's, not measured from here
        decoder_path="http",
        verifier_backend="server",
        mean_accepted_length=(accepted + forwards) / forwards if drafted and forwards else None,
        positions=counters.positions() if counters is not None and drafted else PositionCounts(),
        ttft_s=stats.ttft_p50_s,
        tpot_s=stats.tpot_s,
        itl_p50_s=stats.itl_p50_s,
        itl_p90_s=stats.itl_p90_s,
        itl_p99_s=stats.itl_p99_s,
        paired_speedups=tuple(
            mine.tokens_per_second / theirs.tokens_per_second
            for mine, theirs in zip(timed, reference, strict=True)
            if theirs.tokens_per_second > 0
        )
        if len(reference) == len(timed)
        else (),
        serving=stats,
    )


def serving_info(case: Case, measurement: Measurement | None) -> dict[str, Any]:
    """A serving case's load and latencies for extra_info and the report rows ({} for engine cases)."""
    if case.serving is None:
        return {}
    stats = measurement.serving if measurement is not None else None
    return {
        "endpoint": case.serving.endpoint,
        "concurrency": case.serving.concurrency,
        "request_rate": case.serving.request_rate,
        "requests": case.serving.requests,
        "ttft_p50_s": stats.ttft_p50_s if stats else None,
        "ttft_p90_s": stats.ttft_p90_s if stats else None,
        "ttft_p99_s": stats.ttft_p99_s if stats else None,
        "request_throughput": stats.request_throughput if stats else None,
        "output_throughput": stats.output_throughput if stats else None,
    }
