"""The thread that owns the engine: it runs admitted requests step by step and sends each one's text as it grows.

The engine runs one generation at a time (its KV caches are shared), so admitted requests take turns, each run to
its end before the next starts; a request whose client went away is stopped at its next step. Between the worker
thread and the server's event loop, each request has an :class:`asyncio.Queue` of :class:`Event` s.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

from specdec.config import GenerationConfig, SpeculationConfig
from specdec.engine import SpeculativeEngine
from specdec.serving.metrics import ServerMetrics
from specdec.serving.protocol import CompletionRequest

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to: held back until complete


@dataclass(frozen=True)
class Event:
    """``text``: a delta of the answer; ``done``: the end (``finish_reason``, token counts); ``error``: a failure."""

    kind: str  # "text", "done" or "error"
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Job:
    request: CompletionRequest
    prompt_ids: list[int]
    arrived: float  # time.perf_counter() at arrival
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Worker:
    def __init__(self, engine: SpeculativeEngine, speculation: SpeculationConfig, metrics: ServerMetrics) -> None:
        self.engine, self.speculation, self.metrics = engine, speculation, metrics
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="specdec-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def stop(self, timeout: float = 10.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                self.metrics.finished("cancelled")
                continue
            try:
                outcome = self._serve(job)
            except Exception as error:  # a failed request never stops the worker
                job.send(Event("error", text=f"{type(error).__name__}: {error}"))
                outcome = "error"
            self.metrics.finished(outcome)

    def _serve(self, job: Job) -> str:
        request = job.request
        generation = GenerationConfig(
            max_new_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p, seed=request.seed
        )
        text = TextStream(self.engine, request.stop)
        last = job.arrived
        with self.engine.start([job.prompt_ids], generation, self.speculation, stream=True) as run:
            fresh = run.new_tokens()[0]  # after the prefill: the first token
            while True:
                now = time.perf_counter()
                if fresh:
                    if text.count == 0:
                        self.metrics.ttft.observe(now - job.arrived)
                    else:
                        for _ in fresh:  # a step's tokens share its time
                            self.metrics.itl.observe((now - last) / len(fresh))
                    last = now
                    delta = text.extend(fresh)
                    if delta:
                        job.send(Event("text", text=delta))
                if text.stopped or run.done:
                    break
                if job.cancelled.is_set():
                    self.metrics.add_tokens(len(job.prompt_ids), text.count)
                    return "cancelled"
                run.step()
                record = run.records[-1]
                self.metrics.add_step(record.tree_depth or record.drafted, record.accepted)
                fresh = run.new_tokens()[0]
            ended_early = text.count < request.max_tokens  # an end-of-sequence token, or a stop sequence
        tail = text.finish()
        if tail:
            job.send(Event("text", text=tail))
        self.metrics.add_tokens(len(job.prompt_ids), text.count)
        reason = "stop" if text.stopped or ended_early else "length"
        job.send(Event("done", finish_reason=reason, prompt_tokens=len(job.prompt_ids), completion_tokens=text.count))
        return "ok"


class TextStream:
    """The answer's text as tokens arrive: deltas that never need taking back (an incomplete character, or the
    start of what may become a stop sequence, is held back), cut before the first stop sequence."""

    def __init__(self, engine: SpeculativeEngine, stop: tuple[str, ...]) -> None:
        self.engine, self.stop = engine, stop
        self.ids: list[int] = []
        self.sent = ""  # text already sent
        self.stopped = False
        self._hold = max((len(s) for s in stop), default=1) - 1  # characters that may start a stop sequence

    @property
    def count(self) -> int:
        return len(self.ids)

    def extend(self, ids: list[int]) -> str:
        if self.stopped:
            return ""
        self.ids.extend(ids)
        text = self.engine.decode(self.ids)
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            return self._send(text[:cut])
        safe = text[: len(text) - self._hold] if self._hold else text
        while safe.endswith(REPLACEMENT):
            safe = safe[:-1]
        return self._send(safe)

    def finish(self) -> str:
        """Whatever was held back, at the end of the generation."""
        if self.stopped:
            return ""
        text = self.engine.decode(self.ids)
        cut = self._stop_at(text)
        self.stopped = cut is not None
        return self._send(text if cut is None else text[:cut])

    def _stop_at(self, text: str) -> int | None:
        found = [i for i in (text.find(s, max(0, len(self.sent) - len(s))) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _send(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
