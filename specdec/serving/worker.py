"""The thread that owns the engine: it runs admitted requests in one batch that they join and leave between steps,
and sends each one's text as it grows.

**Continuous batching.** Requests that can share a batch (greedy ones; sampled ones with the same temperature and
top-p and no seed) run in a slot batch (``SpeculativeEngine.open_slots``): a waiting request joins a free row between
two speculative steps (one target forward reads its prompt), and leaves when it ends, meets a stop sequence or its
client goes away. Each request's greedy output is the one it gets alone.

A batch has as many rows as requests were waiting when it opened, rounded up to a power of two, at most ``slots`` (the
server's ``--max-concurrency``), since an empty row costs a full row's compute on a CPU, and as many columns as its
requests need. When every row is taken and a request that could share the batch waits, or one comes whose prompt or
``max_tokens`` does not fit, the batch grows: its requests move to a new batch sized for all of them, each re-reading
its prompt and what it generated so far, and go on unchanged. A request that cannot share the running batch (a seed with
sampling, another temperature or top-p) waits until it empties, first come first served. With a drafter that runs
batches in lockstep (``medusa``, ``eagle``, token trees) requests take turns, each run alone. Between the worker thread
and the server's event loop, each request has an :class:`asyncio.Queue` of :class:`Event` s.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from dataclasses import dataclass, field

from specdec.config import GenerationConfig, SpeculationConfig
from specdec.engine import SpeculativeEngine
from specdec.generation import Generation
from specdec.serving.metrics import ServerMetrics
from specdec.serving.protocol import CompletionRequest

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to: held back until complete
PROMPT_ROOM_STEP = 64  # a slot batch's prompt room is the longest waiting prompt rounded up to this


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

    @property
    def sampling(self) -> tuple[float, float | None] | None:
        """What a batch it joins must share: (temperature, top_p); None when it must run alone (seeded sampling)."""
        request = self.request
        if request.temperature == 0.0:
            return (0.0, None)
        return None if request.seed is not None else (request.temperature, request.top_p)


@dataclass
class _Row:
    """A request running in a row of the slot batch."""

    job: Job
    text: TextStream
    last: float  # when its latest tokens were known (for the inter-token latency)

    @property
    def remaining(self) -> int:
        """Tokens it may still generate."""
        return self.job.request.max_tokens - self.text.count


class Worker:
    def __init__(
        self,
        engine: SpeculativeEngine,
        speculation: SpeculationConfig,
        metrics: ServerMetrics,
        slots: int = 1,
        max_tokens_limit: int = 1024,
    ) -> None:
        self.engine, self.speculation, self.metrics = engine, speculation, metrics
        self.slots, self.max_tokens_limit = slots, max_tokens_limit
        drafter = engine.drafter
        width = getattr(drafter, "max_width", None)
        self.batching = drafter is None or (
            bool(getattr(drafter, "per_row", False))
            and (width is None or width(speculation.max_k) <= speculation.max_k)
        )
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._pending: collections.deque[Job] = collections.deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="specdec-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def stop(self, timeout: float = 10.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------------- queue
    def _receive(self, block: bool) -> None:
        """Move submitted jobs to the pending queue (waiting for one if ``block``); ``None`` means stop."""
        while True:
            try:
                job = self._jobs.get(block=block)
            except queue.Empty:
                return
            block = False
            if job is None:
                self._stopping = True
            else:
                self._pending.append(job)

    def _run(self) -> None:
        while not (self._stopping and not self._pending):
            self._receive(block=not self._pending and not self._stopping)
            if not self._pending:
                continue
            job = self._pending[0]
            if job.cancelled.is_set():
                self._pending.popleft()
                self.metrics.finished("cancelled")
            elif self.batching and job.sampling is not None:
                self._run_batch()
            else:
                self._pending.popleft()
                self._run_alone(job)

    # ------------------------------------------------------------------------------------- one batch, shared
    def _batch_shape(self, needs: list[tuple[int, int]]) -> tuple[int, int]:
        """(prompt room, max_new_tokens) of a slot batch for requests that need ``(prompt tokens, max tokens)``: the
        longest prompt rounded up to ``PROMPT_ROOM_STEP``, the most tokens asked for rounded up to a power of two,
        both within the model's context. (Attention off the fast GPU kernels reads the whole cache, so a batch
        holds no more columns than its requests need; one that does not fit makes the batch grow.)"""
        longest = max(prompt for prompt, _ in needs)
        most = max(tokens for _, tokens in needs)
        room = -(-longest // PROMPT_ROOM_STEP) * PROMPT_ROOM_STEP
        new = min(self.max_tokens_limit, 1 << (most - 1).bit_length())
        context = self.engine.target_model.context_length
        if context is not None:
            room = max(longest, min(room, context - most))
            new = max(most, min(new, context - room))
        return room, new

    def _run_batch(self) -> None:
        """Run slot batches for the first pending job and those that can share its batch, until none is left."""
        sampling = self._pending[0].sampling
        assert sampling is not None
        carried: list[_Row] = []
        while True:
            carried = self._run_slots(sampling, carried)
            if not carried:
                return

    def _run_slots(self, sampling: tuple[float, float | None], carried: list[_Row]) -> list[_Row]:
        """Open a slot batch for the ``carried`` requests and the pending jobs that can share it, and run it, letting
        pending jobs that fit join between steps, until no request is left in it (returns []), or until requests
        wait while every row is taken and the batch may grow: then it returns its requests, to carry into a batch
        twice as large (each re-reads its prompt and what it generated so far; its output goes on unchanged)."""
        waiting = [job for job in list(self._pending)[: self.slots] if job.sampling == sampling]
        slots = min(self.slots, 1 << (len(carried) + len(waiting) - 1).bit_length())  # rounded up to a power of two
        resumed = [(running.job.prompt_ids + running.text.ids, running.remaining) for running in carried]
        needs = [(len(ids), n) for ids, n in resumed] + [
            (len(job.prompt_ids), job.request.max_tokens) for job in waiting
        ]
        room, new = self._batch_shape(needs)
        temperature, top_p = sampling
        generation = GenerationConfig(max_new_tokens=new, temperature=temperature, top_p=top_p)
        rows: dict[int, _Row] = {}
        try:
            with self.engine.open_slots(slots, room, generation, self.speculation) as run:
                if carried:
                    rows.update(enumerate(carried))
                    run.admit(list(range(len(carried))), [ids for ids, _ in resumed], [n for _, n in resumed])
                    self.metrics.add_resumed(len(carried))
                    self._deliver(run, rows)
                while True:
                    self._admit(run, rows, sampling, room, new)
                    if not rows:
                        return []
                    for row, running in list(rows.items()):
                        if running.job.cancelled.is_set():
                            run.finish_row(row)
                            self._finish(rows.pop(row), "cancelled")
                    if rows and self._outgrown(run, slots, sampling, room, new):
                        return list(rows.values())  # the batch grows
                    if rows:
                        run.step()
                        record = run.records[-1]
                        if record.row_drafted:
                            self.metrics.add_step(record.row_drafted, record.row_accepted or ())
                        else:
                            self.metrics.add_step((record.drafted,), (record.accepted,))
                        self._deliver(run, rows)
                    self._receive(block=False)
        except Exception as error:  # a failure fails the requests in the batch (or about to open it), not the worker
            failed = [running.job for running in rows.values()] or [running.job for running in carried]
            if not failed:  # the batch did not open: the jobs it was for
                failed = [job for job in waiting if job in self._pending]
                self._pending = collections.deque(job for job in self._pending if job not in failed)
            for job in failed:
                job.send(Event("error", text=f"{type(error).__name__}: {error}"))
                self.metrics.finished("error")
            return []

    def _outgrown(self, run: Generation, slots: int, sampling: tuple[float, float | None], room: int, new: int) -> bool:
        """The next pending job could share this batch, but the batch has no free row (and may grow), or the job's
        prompt or ``max_tokens`` do not fit it."""
        job = self._pending[0] if self._pending else None
        if job is None or job.sampling != sampling:
            return False
        fits = len(job.prompt_ids) <= room and job.request.max_tokens <= new
        return not fits or (not run.free_rows and slots < self.slots)

    def _admit(
        self, run: Generation, rows: dict[int, _Row], sampling: tuple[float, float | None], room: int, new: int
    ) -> None:
        """Pending jobs join free rows, in order, while the next one fits this batch."""
        self._receive(block=False)
        joining: list[Job] = []
        free = run.free_rows
        while self._pending and len(joining) < len(free):
            job = self._pending[0]
            if job.cancelled.is_set():
                self._pending.popleft()
                self.metrics.finished("cancelled")
                continue
            if job.sampling != sampling or len(job.prompt_ids) > room or job.request.max_tokens > new:
                break  # it waits for the batch to empty (first come, first served)
            joining.append(self._pending.popleft())
        if not joining:
            return
        taken = free[: len(joining)]
        for row, job in zip(taken, joining, strict=True):  # before admit: a failure there fails them too
            rows[row] = _Row(job, TextStream(self.engine, job.request.stop), job.arrived)
        run.admit(taken, [job.prompt_ids for job in joining], [job.request.max_tokens for job in joining])
        self._deliver(run, rows)

    def _deliver(self, run: Generation, rows: dict[int, _Row]) -> None:
        """Send each request its new text; finish the requests that ended (or met a stop sequence)."""
        fresh = run.new_tokens()
        now = time.perf_counter()
        for row, running in list(rows.items()):
            tokens = fresh[row]
            if tokens:
                self._observe(running, tokens, now)
                delta = running.text.extend(tokens)
                if delta:
                    running.job.send(Event("text", text=delta))
                if running.text.stopped:
                    run.finish_row(row)
            if not run.batch.active[row]:
                self._finish(rows.pop(row), "ok")

    def _observe(self, running: _Row, tokens: list[int], now: float) -> None:
        if running.text.count == 0:
            self.metrics.ttft.observe(now - running.job.arrived)
        else:
            for _ in tokens:  # a step's tokens share its time
                self.metrics.itl.observe((now - running.last) / len(tokens))
        running.last = now

    def _finish(self, running: _Row, outcome: str) -> None:
        job, text = running.job, running.text
        self.metrics.add_tokens(len(job.prompt_ids), text.count)
        self.metrics.finished(outcome)
        if outcome != "ok":
            return
        tail = text.finish()
        if tail:
            job.send(Event("text", text=tail))
        reason = "stop" if text.stopped or text.count < job.request.max_tokens else "length"
        job.send(Event("done", finish_reason=reason, prompt_tokens=len(job.prompt_ids), completion_tokens=text.count))

    # -------------------------------------------------------------------------------------------- one request
    def _run_alone(self, job: Job) -> None:
        running = _Row(job, TextStream(self.engine, job.request.stop), job.arrived)
        try:
            outcome = self._serve(running)
        except Exception as error:  # a failed request never stops the worker
            job.send(Event("error", text=f"{type(error).__name__}: {error}"))
            self.metrics.finished("error")
            return
        self._finish(running, outcome)

    def _serve(self, running: _Row) -> str:
        """Run one request in a generation of its own; returns ``ok`` or ``cancelled``."""
        job, text, request = running.job, running.text, running.job.request
        generation = GenerationConfig(
            max_new_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
            seed=request.seed or 0,
        )  # fmt: skip
        with self.engine.start([job.prompt_ids], generation, self.speculation, stream=True) as run:
            fresh = run.new_tokens()[0]  # after the prefill: the first token
            while True:
                if fresh:
                    self._observe(running, fresh, time.perf_counter())
                    delta = text.extend(fresh)
                    if delta:
                        job.send(Event("text", text=delta))
                if text.stopped or run.done:
                    break
                if job.cancelled.is_set():
                    return "cancelled"
                run.step()
                record = run.records[-1]
                self.metrics.add_step((record.tree_depth or record.drafted,), (record.accepted,))
                fresh = run.new_tokens()[0]
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
