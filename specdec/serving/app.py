"""The ASGI application of ``specdec serve`` (Starlette): OpenAI's completion and chat endpoints, models, health
and Prometheus metrics, over one engine driven by a :class:`~specdec.serving.worker.Worker` thread.

Admission: at most ``max_concurrency`` requests are admitted at once (they share one batch, joining and leaving it
between speculative steps: see :mod:`specdec.serving.worker`); more wait in the order they came. A streamed request
whose client goes away is cancelled: its slot is freed at once and the worker stops it at its next step.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from specdec.config import SpeculationConfig
from specdec.engine import SpeculativeEngine
from specdec.errors import SpecdecError
from specdec.serving import protocol
from specdec.serving.metrics import ServerMetrics
from specdec.serving.protocol import CompletionRequest, RequestError
from specdec.serving.worker import Event, Job, Worker


@dataclass(frozen=True)
class ServeConfig:
    """How the server serves: its name for the model, admission and token limits."""

    model_name: str  # what /v1/models lists and requests must name (the --target argument)
    max_concurrency: int = 16
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 16  # OpenAI's default for completions

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise SpecdecError(f"--max-concurrency must be at least 1, got {self.max_concurrency}")
        if self.max_tokens_limit < 1:
            raise SpecdecError(f"--max-tokens-limit must be at least 1, got {self.max_tokens_limit}")


def create_app(engine: SpeculativeEngine, speculation: SpeculationConfig, config: ServeConfig) -> Starlette:
    metrics = ServerMetrics()
    state: dict[str, Any] = {}
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["slots"] = asyncio.Semaphore(config.max_concurrency)
        state["worker"] = Worker(
            engine, speculation, metrics, slots=config.max_concurrency, max_tokens_limit=config.max_tokens_limit
        )
        yield
        state["worker"].stop()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        entry = {"id": config.model_name, "object": "model", "created": created, "owned_by": "specdec"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def completions(request: Request) -> Response:
        return await _complete(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await _complete(request, chat=True)

    async def _complete(http: Request, chat: bool) -> Response:
        arrived = time.perf_counter()
        try:
            body = protocol.parse_body(await http.body())
            request, messages = protocol.parse_request(
                body, chat, config.model_name, config.max_tokens_limit, config.default_max_tokens
            )
            prompt_ids = _prompt_ids(engine, request, messages)
        except RequestError as error:
            return JSONResponse(protocol.error_body(error.message, error.param, error.kind), status_code=error.status)
        job = Job(request, prompt_ids, arrived, asyncio.get_running_loop())
        ident = protocol.new_id(chat)
        if request.stream:
            return StreamingResponse(_stream(job, ident), media_type="text/event-stream")
        async with _admitted(job):
            state["worker"].submit(job)
            text, done = await _collect(job)
        if done.kind == "error":
            return JSONResponse(protocol.error_body(done.text, None, "server_error"), status_code=500)
        counts = protocol.usage(done.prompt_tokens, done.completion_tokens)
        return JSONResponse(protocol.response(request, ident, text, done.finish_reason or "stop", counts))

    @asynccontextmanager
    async def _admitted(job: Job) -> AsyncIterator[None]:
        """Hold one of the ``max_concurrency`` slots; the job is cancelled if its handler ends early."""
        metrics.waiting += 1
        try:
            await state["slots"].acquire()
        finally:
            metrics.waiting -= 1
        metrics.running += 1
        try:
            yield
        finally:
            job.cancelled.set()  # a no-op for a finished job; stops a running one at its next step
            metrics.running -= 1
            state["slots"].release()

    async def _collect(job: Job) -> tuple[str, Event]:
        parts = []
        while (event := await job.events.get()).kind == "text":
            parts.append(event.text)
        return "".join(parts), event

    async def _stream(job: Job, ident: str) -> AsyncIterator[str]:
        request = job.request
        async with _admitted(job):
            state["worker"].submit(job)
            first = True
            while (event := await job.events.get()).kind == "text":
                yield _sse(protocol.chunk(request, ident, event.text, None, first))
                first = False
            if event.kind == "error":
                yield _sse(protocol.error_body(event.text, None, "server_error"))
            else:
                if first and request.chat:  # nothing was generated: the role still comes first
                    yield _sse(protocol.chunk(request, ident, None, None, True))
                yield _sse(protocol.chunk(request, ident, None, event.finish_reason))
                if request.include_usage:
                    counts = protocol.usage(event.prompt_tokens, event.completion_tokens)
                    yield _sse(protocol.usage_chunk(request, ident, counts))
            yield "data: [DONE]\n\n"

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    return app


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _prompt_ids(
    engine: SpeculativeEngine, request: CompletionRequest, messages: list[dict[str, str]] | None
) -> list[int]:
    """The prompt as token ids, checked against the vocabulary and the model's context (400s naming the field)."""
    tokenizer = engine.target_model.tokenizer
    if messages is not None:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise RequestError(
                f"model {request.model!r} has no chat template (its tokenizer_config.json has no chat_template): "
                "use /v1/completions with a prompt instead",
                "messages",
            )
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = list(engine.encode(text)[0])
    elif request.prompt_ids is not None:
        if max(request.prompt_ids) >= engine.vocab_size:
            raise RequestError(
                f"prompt holds token id {max(request.prompt_ids)}, beyond the vocabulary ({engine.vocab_size} ids)",
                "prompt",
            )
        ids = list(request.prompt_ids)
    else:
        assert request.prompt is not None
        ids = list(engine.encode(request.prompt)[0])
    if not ids:
        raise RequestError("the prompt encodes to no tokens", "messages" if messages is not None else "prompt")
    limit = engine.target_model.context_length
    if limit is not None and len(ids) + request.max_tokens > limit:
        raise RequestError(
            f"prompt ({len(ids)} tokens) + max_tokens ({request.max_tokens}) = {len(ids) + request.max_tokens} "
            f"tokens exceeds the model's context of {limit} tokens: lower max_tokens or shorten the prompt",
            "max_tokens",
        )
    return ids
