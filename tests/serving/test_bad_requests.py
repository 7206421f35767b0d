"""Bad input never takes the server down: each bad request gets a 400 naming the field, and the next good request
succeeds; a client that goes away mid-stream frees its slot."""

from __future__ import annotations

import json
import time

import httpx
import pytest

GOOD = {"model": "zoo:tiny-code-target", "prompt": "def f(", "max_tokens": 4, "temperature": 0}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        ({**GOOD, "max_tokens": "ten"}, "max_tokens", "must be an integer"),
        ({**GOOD, "temperature": "hot"}, "temperature", "must be a number"),
        ({**GOOD, "stream": "yes"}, "stream", "must be a boolean"),
        ({**GOOD, "model": "gpt-4"}, "model", "is not served here"),
        ({**GOOD, "max_tokens": 100000}, "max_tokens", "exceeds this server's limit"),
        ({**GOOD, "max_tokens": 1000, "prompt": "x " * 300}, "max_tokens", "exceeds the model's context"),
        ({**GOOD, "max_tokens": 0}, "max_tokens", "at least 1"),
        ({**GOOD, "temperature": -0.5}, "temperature", "between 0 and 2"),
        ({**GOOD, "top_p": 0}, "top_p", "in (0, 1]"),
        ({**GOOD, "prompt": ""}, "prompt", "empty"),
        ({**GOOD, "prompt": [1, -2]}, "prompt", "token ids"),
        ({**GOOD, "prompt": [999999]}, "prompt", "beyond the vocabulary"),
        ({**GOOD, "n": 2}, "n", "must be 1"),
        ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop", "up to 4"),
        ({k: v for k, v in GOOD.items() if k != "prompt"}, "prompt", "required"),
    ],
    ids=[
        "malformed-json", "not-an-object", "max-tokens-type", "temperature-type", "stream-type", "unknown-model",
        "beyond-limit", "beyond-context", "zero-tokens", "negative-temperature", "top-p", "empty-prompt",
        "negative-id", "id-beyond-vocabulary", "n", "too-many-stops", "no-prompt",
    ],
)  # fmt: skip
def test_a_bad_completion_request_gets_a_400_naming_the_field(live, body, param, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = httpx.post(f"{live.base_url}/completions", content=content, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"
    assert httpx.post(f"{live.base_url}/completions", json=GOOD, timeout=60).status_code == 200


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (None, "messages"),
        ([], "messages"),
        (["hi"], "messages[0]"),
        ([{"role": "robot", "content": "x"}], "messages[0]"),
    ],
)
def test_a_bad_chat_request_gets_a_400_naming_the_field(live, messages, param):
    body = {"model": "zoo:tiny-code-target", "max_tokens": 4}
    if messages is not None:
        body["messages"] = messages
    answer = httpx.post(f"{live.base_url}/chat/completions", json=body)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param


def test_a_client_that_leaves_mid_stream_frees_its_slot(live):
    body = {**GOOD, "max_tokens": 400, "stream": True, "prompt": "import os\n"}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{live.base_url}/completions", json=body) as sse:
        lines = sse.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # the first chunk arrived; now go away
    deadline = time.monotonic() + 30
    while _gauge(live) != 0:
        assert time.monotonic() < deadline, "the left request still holds its slot"
        time.sleep(0.1)
    assert httpx.post(f"{live.base_url}/completions", json=GOOD, timeout=60).status_code == 200
    assert 'specdec_requests_total{outcome="cancelled"}' in httpx.get(f"{live.url}/metrics").text


def _gauge(live) -> float:
    for line in httpx.get(f"{live.url}/metrics").text.splitlines():
        if line.startswith("specdec_requests_running "):
            return float(line.split()[1])
    raise AssertionError("no specdec_requests_running in /metrics")
