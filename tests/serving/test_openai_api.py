"""The server through the official ``openai`` client: completions and chat equal the engine's own greedy output,
streams concatenate to the whole answer, stop sequences cut it, and 16 concurrent streams each get their own."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from specdec import GenerationConfig, SpeculationConfig

openai = pytest.importorskip("openai")

PROMPTS = [
    "def parse_args(",
    "import os\n\ndef main():\n",
    "class Stack:\n    def __init__(self):\n",
    "for index, value in enumerate(",
]


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, timeout=120)


def engine_text(live, prompt, max_tokens: int) -> tuple[str, int]:
    """What ``specdec generate`` gives for the prompt (the same engine, greedy, K = 4): text and token count."""
    result = live.engine.generate(prompt, GenerationConfig(max_new_tokens=max_tokens), SpeculationConfig(k=4))
    return result.text, len(result.token_ids[0])


def metric(live, name: str, missing: float | None = None) -> float:
    """A sample of /metrics by its name and labels (``missing`` where absent; None: it must be there)."""
    text = httpx.get(f"{live.url}/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found or missing is not None, f"{name} not in /metrics"
    return float(found.group(1)) if found else float(missing or 0.0)


def test_a_greedy_completion_equals_the_engines_output(live, client):
    answer = client.completions.create(model="zoo:tiny-code-target", prompt=PROMPTS[0], max_tokens=24, temperature=0)
    text, count = engine_text(live, PROMPTS[0], 24)
    assert answer.choices[0].text == text and text
    assert answer.usage.completion_tokens == count and answer.choices[0].finish_reason in ("length", "stop")
    assert answer.usage.prompt_tokens == len(live.engine.encode(PROMPTS[0])[0])


def test_a_chat_answer_continues_the_rendered_conversation(live, client):
    messages = [{"role": "user", "content": "write a function that reverses a list"}]
    answer = client.chat.completions.create(
        model="zoo:tiny-code-target", messages=messages, max_tokens=20, temperature=0
    )
    rendered = live.engine.target_model.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == engine_text(live, rendered, 20)[0]


@pytest.mark.parametrize("chat", [False, True], ids=["completion", "chat"])
def test_a_streamed_answer_concatenates_to_the_whole_one(client, chat):
    if chat:
        kwargs = {"messages": [{"role": "user", "content": "sum a list"}], "max_tokens": 24, "temperature": 0}
        whole = client.chat.completions.create(model="zoo:tiny-code-target", **kwargs).choices[0].message.content
        chunks = list(client.chat.completions.create(model="zoo:tiny-code-target", stream=True, **kwargs))
        assert chunks[0].choices[0].delta.role == "assistant"
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    else:
        kwargs = {"prompt": PROMPTS[1], "max_tokens": 24, "temperature": 0}
        whole = client.completions.create(model="zoo:tiny-code-target", **kwargs).choices[0].text
        chunks = list(client.completions.create(model="zoo:tiny-code-target", stream=True, **kwargs))
        streamed = "".join(c.choices[0].text for c in chunks)
    assert streamed == whole and len(chunks) > 2
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_the_usage_chunk_ends_a_stream_that_asks_for_it(client):
    chunks = list(
        client.completions.create(
            model="zoo:tiny-code-target",
            prompt=PROMPTS[2],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_a_stop_sequence_cuts_the_answer_before_it(live, client):
    text, _ = engine_text(live, PROMPTS[1], 32)
    stop = text[10:13]  # three characters the greedy answer contains
    answer = client.completions.create(
        model="zoo:tiny-code-target", prompt=PROMPTS[1], max_tokens=32, temperature=0, stop=[stop]
    )
    assert answer.choices[0].text == text[: text.index(stop)] and answer.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="zoo:tiny-code-target", prompt=PROMPTS[1], max_tokens=32, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]


def test_sixteen_concurrent_streams_each_get_their_own_greedy_output(live, client):
    prompts = [f"{PROMPTS[i % 4]}{'    ' * (i // 4)}" for i in range(16)]
    expected = [engine_text(live, p, 16)[0] for p in prompts]
    before = metric(live, 'specdec_requests_total{outcome="ok"}', missing=0.0)

    def stream(prompt: str) -> str:
        chunks = client.completions.create(
            model="zoo:tiny-code-target", prompt=prompt, max_tokens=16, temperature=0, stream=True
        )
        return "".join(c.choices[0].text for c in chunks)

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(stream, prompts))
    assert got == expected
    assert metric(live, 'specdec_requests_total{outcome="ok"}') - before == 16
    assert metric(live, "specdec_requests_running") == 0 and metric(live, "specdec_requests_waiting") == 0
    assert (
        metric(live, 'specdec_draft_tokens_total{position="1"}')
        >= metric(live, 'specdec_accepted_tokens_total{position="1"}')
        > 0
    )


def test_models_and_health(live, client):
    assert [m.id for m in client.models.list()] == ["zoo:tiny-code-target"]
    assert httpx.get(f"{live.url}/health").json() == {"status": "ok"}


def test_a_seeded_sampled_completion_is_the_engines_sampled_output(live, client):
    kwargs = {"prompt": PROMPTS[3], "max_tokens": 16, "temperature": 0.8, "top_p": 0.95, "seed": 3}
    first = client.completions.create(model="zoo:tiny-code-target", **kwargs).choices[0].text
    again = client.completions.create(model="zoo:tiny-code-target", **kwargs).choices[0].text
    expected = live.engine.generate(
        PROMPTS[3], GenerationConfig(max_new_tokens=16, temperature=0.8, top_p=0.95, seed=3), SpeculationConfig(k=4)
    )
    assert first == again == expected.text
