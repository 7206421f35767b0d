"""The OpenAI wire format: requests checked field by field, responses and stream chunks built as OpenAI's API does.

A request that cannot be served raises :class:`RequestError` naming the field (``param``) and what was expected; the
server answers it with status 400 and OpenAI's error body (:func:`error_body`), and stays up.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

MAX_STOP_SEQUENCES = 4  # as OpenAI's API allows


class RequestError(Exception):
    """A request the server refuses (400): ``param`` names the field at fault (None: the body as a whole)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


@dataclass(frozen=True)
class CompletionRequest:
    """A completion or chat request, checked: what the worker needs to run it."""

    chat: bool  # /v1/chat/completions (messages) rather than /v1/completions (prompt)
    model: str
    prompt: str | None  # the text to continue (a chat's rendered messages), or None when given as ids
    prompt_ids: tuple[int, ...] | None  # a completion prompt given as token ids
    max_tokens: int
    temperature: float
    top_p: float | None
    seed: int | None  # None: not given (sampled requests without one can share a batch)
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage counts


# field -> (the JSON types it accepts, as a word for the message)
_KNOWN = {
    "model": ((str,), "a string"),
    "prompt": ((str, list), "a string or a list of token ids"),
    "messages": ((list,), "a list of messages"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "temperature": ((int, float), "a number"),
    "top_p": ((int, float), "a number"),
    "seed": ((int,), "an integer"),
    "stop": ((str, list), "a string or a list of strings"),
    "n": ((int,), "an integer"),
    "stream": ((bool,), "a boolean"),
    "stream_options": ((dict,), "an object"),
}
# Fields of OpenAI's API that change nothing here (accepted when of the right kind, not acted on).
_IGNORED = {
    "user": ((str,), "a string"),
    "frequency_penalty": ((int, float), "a number"),
    "presence_penalty": ((int, float), "a number"),
    "logit_bias": ((dict,), "an object"),
    "echo": ((bool,), "a boolean"),
}


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object (400 when it is not one)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def parse_request(
    body: dict[str, Any], chat: bool, served_model: str, max_tokens_limit: int, default_max_tokens: int
) -> tuple[CompletionRequest, list[dict[str, str]] | None]:
    """Check ``body`` field by field; returns the request and, for a chat, its messages (rendered by the caller with
    the tokenizer's chat template)."""
    for name, value in body.items():
        expected = _KNOWN.get(name) or _IGNORED.get(name)
        if expected is None or value is None:
            continue  # unknown fields are ignored, as OpenAI-compatible servers do; null means "not given"
        kinds, word = expected
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise RequestError(f"{name} must be {word}, got {json.dumps(value)[:60]}", name)
    model = body.get("model")
    if model is None:
        raise RequestError("model is required: the name GET /v1/models lists", "model")
    if model != served_model:
        raise RequestError(
            f"model {model!r} is not served here: this server serves {served_model!r} (GET /v1/models)", "model"
        )
    messages = _messages(body) if chat else None
    prompt, prompt_ids = (None, None) if chat else _prompt(body)
    max_tokens = body.get("max_completion_tokens") if chat and body.get("max_tokens") is None else None
    max_tokens = max_tokens if max_tokens is not None else body.get("max_tokens")
    field = "max_tokens" if body.get("max_tokens") is not None or not chat else "max_completion_tokens"
    if max_tokens is None:
        max_tokens = min(default_max_tokens, max_tokens_limit)
    if max_tokens < 1:
        raise RequestError(f"{field} must be at least 1, got {max_tokens}", field)
    if max_tokens > max_tokens_limit:
        raise RequestError(
            f"{field} {max_tokens} exceeds this server's limit of {max_tokens_limit} "
            "(specdec serve --max-tokens-limit)",
            field,
        )
    temperature = float(body["temperature"]) if body.get("temperature") is not None else 1.0
    if not 0.0 <= temperature <= 2.0:
        raise RequestError(f"temperature must be between 0 and 2, got {temperature:g}", "temperature")
    top_p = float(body["top_p"]) if body.get("top_p") is not None else None
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p must be in (0, 1], got {top_p:g}", "top_p")
    if body.get("n") not in (None, 1):
        raise RequestError(f"n must be 1 (one choice per request), got {body['n']}", "n")
    stop = _stop(body.get("stop"))
    options = body.get("stream_options") or {}
    request = CompletionRequest(
        chat=chat,
        model=model,
        prompt=prompt,
        prompt_ids=prompt_ids,
        max_tokens=int(max_tokens),
        temperature=temperature,
        top_p=top_p if top_p is not None and top_p < 1.0 else None,
        seed=int(body["seed"]) if body.get("seed") is not None else None,
        stop=stop,
        stream=bool(body.get("stream") or False),
        include_usage=bool(options.get("include_usage", False)),
    )
    return request, messages


def _prompt(body: dict[str, Any]) -> tuple[str | None, tuple[int, ...] | None]:
    prompt = body.get("prompt")
    if prompt is None:
        raise RequestError("prompt is required", "prompt")
    if isinstance(prompt, str):
        if prompt == "":
            raise RequestError("prompt is empty: give the text to continue", "prompt")
        return prompt, None
    if len(prompt) == 1 and isinstance(prompt[0], str | list):  # a batch of one: ["text"] or [[ids]]
        return _prompt({"prompt": prompt[0]})
    if not prompt or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in prompt):
        raise RequestError("prompt must be a non-empty string or a non-empty list of token ids (one prompt)", "prompt")
    return None, tuple(prompt)


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not messages:
        raise RequestError("messages is required: a non-empty list of {role, content}", "messages")
    checked = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object with role and content", where)
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "developer", "user", "assistant"):
            raise RequestError(f"{where}.role must be system, developer, user or assistant, got {role!r}", where)
        if isinstance(content, list):  # content parts: only text parts can be read by a text model
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                raise RequestError(f"{where}.content: only text parts are supported", f"{where}.content")
            content = "".join(str(t) for t in texts)
        if not isinstance(content, str):
            raise RequestError(f"{where}.content must be a string", f"{where}.content")
        checked.append({"role": role, "content": content})
    return checked


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    sequences = [stop] if isinstance(stop, str) else stop
    if len(sequences) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in sequences):
        raise RequestError(f"stop must be a non-empty string or up to {MAX_STOP_SEQUENCES} of them", "stop")
    return tuple(sequences)


# ------------------------------------------------------------------------------------------------- responses
def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response(
    request: CompletionRequest, ident: str, text: str, finish_reason: str, counts: dict[str, int]
) -> dict[str, Any]:
    """The whole (non-streamed) answer."""
    created = int(time.time())
    if request.chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None}
        obj = "text_completion"
    choice["finish_reason"] = finish_reason
    return {
        "id": ident,
        "object": obj,
        "created": created,
        "model": request.model,
        "choices": [choice],
        "usage": counts,
    }


def chunk(
    request: CompletionRequest, ident: str, text: str | None, finish_reason: str | None, first: bool = False
) -> dict[str, Any]:
    """One streamed chunk: a text delta, or (``finish_reason`` set) the last one."""
    if request.chat:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {"id": ident, "object": obj, "created": int(time.time()), "model": request.model, "choices": [choice]}


def usage_chunk(request: CompletionRequest, ident: str, counts: dict[str, int]) -> dict[str, Any]:
    """stream_options.include_usage: the last chunk, with no choices and the usage counts."""
    obj = "chat.completion.chunk" if request.chat else "text_completion"
    return {
        "id": ident,
        "object": obj,
        "created": int(time.time()),
        "model": request.model,
        "choices": [],
        "usage": counts,
    }
