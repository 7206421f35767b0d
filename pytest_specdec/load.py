"""Load against an OpenAI-compatible endpoint: streamed completions sent at a bounded concurrency (optionally at a
Poisson request rate), each timed chunk by chunk, and the server's Prometheus counters read before and after.

Definitions (as vLLM's ``benchmark_serving``, over one round of requests):

- TTFT: from sending a request to its first chunk with text;
- TPOT of a request: (its last chunk - its first) / (its tokens - 1); the case reports the median over requests;
- ITL: the gaps between a request's successive text chunks, each divided by the request's mean tokens per chunk
  (a chunk carries one decoding step's tokens, and the stream does not say how many);
- output throughput: the round's completion tokens (``usage``) over the round's wall time; request throughput:
  requests over the same time.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from specdec.metrics import PositionCounts, percentile

# What a request to an endpoint may raise besides httpx.HTTPError: a transport error that httpx did not map (its
# mapping compares httpcore's classes, which a pytester run that re-imported httpcore replaces), a bad JSON answer.
TRANSPORT_ERRORS = (httpx.HTTPError, httpcore.TimeoutException, httpcore.NetworkError, OSError, ValueError)
COUNTER = re.compile(r'^(specdec_[a-z_]+)(?:\{(?:position="(\d+)"|[^}]*)\})?\s+([0-9.eE+-]+)$')


class LoadError(Exception):
    """A request that failed or timed out, or an endpoint that does not answer: the message names the endpoint."""


@dataclass(frozen=True)
class RequestTiming:
    """One streamed request; times in seconds from the start of its round."""

    index: int  # the request's place in the round (prompts cycled)
    sent: float
    first_chunk: float | None  # None: no text came back
    last_chunk: float | None
    chunk_times: tuple[float, ...]  # of every chunk with text
    tokens: int  # completion tokens (usage)
    text: str

    @property
    def ttft(self) -> float | None:
        return self.first_chunk - self.sent if self.first_chunk is not None else None

    @property
    def tpot(self) -> float | None:
        if self.first_chunk is None or self.last_chunk is None or self.tokens < 2:
            return None
        return (self.last_chunk - self.first_chunk) / (self.tokens - 1)

    def itl(self) -> list[float]:
        gaps = [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]
        if not gaps or self.tokens < 2:
            return []
        tokens_per_chunk = (self.tokens - 1) / len(gaps)  # tokens after the first, over the chunks after the first
        return [gap / tokens_per_chunk for gap in gaps]


@dataclass(frozen=True)
class LoadRound:
    """One round: every request of the case once."""

    requests: tuple[RequestTiming, ...]  # in request order
    seconds: float  # wall time from the first send to the last chunk

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.requests)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def requests_per_second(self) -> float:
        return len(self.requests) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class LoadPlan:
    """What a round sends: ``base_url`` is ``http://HOST:PORT/v1``."""

    base_url: str
    model: str
    prompts: tuple[str | tuple[int, ...], ...]  # one per request (the suite's prompts, cycled)
    max_tokens: int
    temperature: float
    seed: int
    concurrency: int
    request_rate: float | None  # requests/s (Poisson arrivals); None: all at once
    request_timeout_s: float
    round_timeout_s: float


def served_model(base_url: str, timeout_s: float = 10.0) -> str:
    """The first model ``GET /v1/models`` lists (what requests name)."""
    try:
        answer = httpx.get(f"{base_url}/models", timeout=timeout_s)
        answer.raise_for_status()
        return str(answer.json()["data"][0]["id"])
    except (*TRANSPORT_ERRORS, KeyError, IndexError, TypeError) as error:
        raise LoadError(
            f"endpoint {base_url} does not answer GET {base_url}/models ({type(error).__name__}: {error}); is an "
            "OpenAI-compatible server listening there?"
        ) from None


def run_round(plan: LoadPlan) -> LoadRound:
    """Send every request of ``plan`` once; raises :class:`LoadError` naming the endpoint on any failure."""
    try:
        return asyncio.run(asyncio.wait_for(_round(plan), plan.round_timeout_s))
    except TimeoutError:
        raise LoadError(
            f"a round of {len(plan.prompts)} requests to {plan.base_url} took longer than {plan.round_timeout_s:g} s "
            "(the case timeout): send fewer requests or raise `case_timeout`"
        ) from None


async def _round(plan: LoadPlan) -> LoadRound:
    slots = asyncio.Semaphore(plan.concurrency)
    arrivals = random.Random(plan.seed)
    limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=plan.request_timeout_s) as client:
        started = time.perf_counter()
        tasks = []
        for index, prompt in enumerate(plan.prompts):
            if plan.request_rate is not None and index > 0:
                await asyncio.sleep(arrivals.expovariate(plan.request_rate))
            await slots.acquire()
            tasks.append(asyncio.create_task(_request(client, plan, index, prompt, started, slots)))
        timings = await asyncio.gather(*tasks)
        seconds = time.perf_counter() - started
    return LoadRound(requests=tuple(timings), seconds=seconds)


async def _request(
    client: httpx.AsyncClient,
    plan: LoadPlan,
    index: int,
    prompt: str | tuple[int, ...],
    started: float,
    slots: asyncio.Semaphore,
) -> RequestTiming:
    body: dict[str, Any] = {
        "model": plan.model,
        "prompt": prompt if isinstance(prompt, str) else list(prompt),
        "max_tokens": plan.max_tokens,
        "temperature": plan.temperature,
        "seed": plan.seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    url = f"{plan.base_url}/completions"
    sent = time.perf_counter() - started
    chunks: list[float] = []
    text: list[str] = []
    tokens: int | None = None
    try:
        async with asyncio.timeout(plan.request_timeout_s), client.stream("POST", url, json=body) as answer:
            if answer.status_code != 200:
                detail = (await answer.aread()).decode(errors="replace")[:300]
                raise LoadError(f"POST {url} answered {answer.status_code}: {detail}")
            async for line in answer.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    break
                data = json.loads(payload)
                if "error" in data:
                    raise LoadError(f"POST {url} streamed an error: {data['error']}")
                if data.get("usage"):
                    tokens = int(data["usage"]["completion_tokens"])
                delta = "".join(choice.get("text") or "" for choice in data.get("choices") or ())
                if delta:
                    chunks.append(time.perf_counter() - started)
                    text.append(delta)
    except TimeoutError:
        raise LoadError(
            f"request {index} to {url} took longer than {plan.request_timeout_s:g} s (the request timeout): "
            "raise `request_timeout` or send fewer tokens"
        ) from None
    except TRANSPORT_ERRORS as error:
        raise LoadError(f"request {index} to {url} failed: {type(error).__name__}: {error}") from None
    finally:
        slots.release()
    if tokens is None:
        raise LoadError(f"POST {url} sent no usage chunk (stream_options.include_usage): its tokens are unknown")
    return RequestTiming(
        index=index,
        sent=sent,
        first_chunk=chunks[0] if chunks else None,
        last_chunk=chunks[-1] if chunks else None,
        chunk_times=tuple(chunks),
        tokens=tokens,
        text="".join(text),
    )


# ---------------------------------------------------------------------------------------------- server counters
@dataclass(frozen=True)
class Counters:
    """specdec serve's counters from ``/metrics`` at one moment."""

    generation_tokens: float
    target_forwards: float
    request_steps: float  # each request's share of the steps (a batched step counts once per request in it)
    requests: float  # finished, every outcome
    drafted: tuple[float, ...]  # per draft position (1 = first drafted)
    accepted: tuple[float, ...]

    def since(self, before: Counters) -> Counters:
        def diff(now: tuple[float, ...], then: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(n - (then[i] if i < len(then) else 0.0) for i, n in enumerate(now))

        return Counters(
            generation_tokens=self.generation_tokens - before.generation_tokens,
            target_forwards=self.target_forwards - before.target_forwards,
            request_steps=self.request_steps - before.request_steps,
            requests=self.requests - before.requests,
            drafted=diff(self.drafted, before.drafted),
            accepted=diff(self.accepted, before.accepted),
        )

    def positions(self) -> PositionCounts:
        """Per draft position: a step reached position i when it accepted every position before it."""
        drafted = tuple(int(d) for d in self.drafted)
        accepted = tuple(int(a) for a in self.accepted)
        reached = tuple(drafted[0:1]) + tuple(min(a, d) for a, d in zip(accepted, drafted[1:], strict=False))
        return PositionCounts(accepted, reached, drafted)


def scrape_counters(base_url: str) -> Counters | None:
    """The counters of ``/metrics`` beside ``base_url`` (``.../v1`` -> ``.../metrics``); None when the endpoint
    exposes no specdec counters (another server)."""
    root = base_url.removesuffix("/").removesuffix("/v1")
    try:
        answer = httpx.get(f"{root}/metrics", timeout=10.0)
    except TRANSPORT_ERRORS:
        return None
    if answer.status_code != 200:
        return None
    values: dict[str, float] = {}
    by_position: dict[str, dict[int, float]] = {"specdec_draft_tokens_total": {}, "specdec_accepted_tokens_total": {}}
    for line in answer.text.splitlines():
        match = COUNTER.match(line.strip())
        if not match:
            continue
        name, position, value = match.group(1), match.group(2), float(match.group(3))
        if position is not None and name in by_position:
            by_position[name][int(position)] = value
        elif name == "specdec_requests_total":
            values[name] = values.get(name, 0.0) + value
        else:
            values[name] = value
    if "specdec_generation_tokens_total" not in values or "specdec_target_forwards_total" not in values:
        return None

    def ordered(name: str) -> tuple[float, ...]:
        found = by_position[name]
        return tuple(found.get(i, 0.0) for i in range(1, max(found, default=0) + 1))

    return Counters(
        generation_tokens=values["specdec_generation_tokens_total"],
        target_forwards=values["specdec_target_forwards_total"],
        # a server from before continuous batching ran one request per forward
        request_steps=values.get("specdec_request_steps_total", values["specdec_target_forwards_total"]),
        requests=values.get("specdec_requests_total", 0.0),
        drafted=ordered("specdec_draft_tokens_total"),
        accepted=ordered("specdec_accepted_tokens_total"),
    )


# ---------------------------------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class LoadStats:
    """A serving case's latencies and throughputs over its timed rounds (seconds; per second)."""

    requests: int  # per round
    concurrency: int
    request_rate: float | None
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    tpot_s: float | None  # median over requests
    itl_p50_s: float | None
    itl_p90_s: float | None
    itl_p99_s: float | None
    request_throughput: float  # requests/s of the fastest round
    output_throughput: float  # tokens/s of the fastest round

    @classmethod
    def of(cls, rounds: Sequence[LoadRound], concurrency: int, request_rate: float | None) -> LoadStats:
        requests = [r for one in rounds for r in one.requests]
        ttfts = [t for t in (r.ttft for r in requests) if t is not None]
        tpots = [t for t in (r.tpot for r in requests) if t is not None]
        itls = [gap for r in requests for gap in r.itl()]
        fastest = max(rounds, key=lambda one: one.tokens_per_second)
        return cls(
            requests=len(rounds[-1].requests),
            concurrency=concurrency,
            request_rate=request_rate,
            ttft_p50_s=percentile(ttfts, 50),
            ttft_p90_s=percentile(ttfts, 90),
            ttft_p99_s=percentile(ttfts, 99),
            tpot_s=statistics.median(tpots) if tpots else None,
            itl_p50_s=percentile(itls, 50),
            itl_p90_s=percentile(itls, 90),
            itl_p99_s=percentile(itls, 99),
            request_throughput=fastest.requests_per_second,
            output_throughput=fastest.tokens_per_second,
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
