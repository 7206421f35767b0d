"""The server's worker batches requests continuously: requests that arrive together or while others run share one
batch (it grows as they come), each gets its own greedy output, and a request that cannot share waits its turn."""

from __future__ import annotations

import asyncio
import time

from specdec import GenerationConfig, SpeculationConfig
from specdec.serving.metrics import ServerMetrics
from specdec.serving.protocol import CompletionRequest
from specdec.serving.worker import Job, Worker

PROMPTS = ["def parse_args(", "import os\n\ndef main():\n", "class Stack:\n", "for index, value in enumerate("]


def request(max_tokens: int, temperature: float = 0.0, seed: int | None = None) -> CompletionRequest:
    return CompletionRequest(
        chat=False, model="m", prompt="", prompt_ids=None, max_tokens=max_tokens, temperature=temperature,
        top_p=None, seed=seed, stop=(), stream=True, include_usage=False,
    )  # fmt: skip


def alone(engine, prompt: str, req: CompletionRequest) -> tuple[str, int]:
    generation = GenerationConfig(max_new_tokens=req.max_tokens, temperature=req.temperature, seed=req.seed or 0)
    result = engine.generate(prompt, generation, SpeculationConfig(k=4))
    return result.text, result.metrics.target_forwards


async def run_jobs(worker: Worker, engine, items: list[tuple[str, CompletionRequest]], stagger: bool) -> list[str]:
    """Submit the jobs (all at once, or the first, then the others once its first text came) and collect texts."""
    loop = asyncio.get_running_loop()
    jobs = [Job(req, engine.encode(prompt)[0], time.perf_counter(), loop) for prompt, req in items]
    texts: list[list[str]] = [[] for _ in jobs]

    async def collect(index: int, job: Job) -> None:
        while (event := await job.events.get()).kind == "text":
            texts[index].append(event.text)
        assert event.kind == "done", event.text

    tasks = []
    for index, job in enumerate(jobs):
        worker.submit(job)
        if stagger and index == 0:  # wait for its first text: it is running when the others come
            first = await job.events.get()
            texts[index].append(first.text)
        tasks.append(asyncio.create_task(collect(index, job)))
    await asyncio.gather(*tasks)
    return ["".join(parts) for parts in texts]


def serve(engine, items, stagger: bool, slots: int = 4) -> tuple[list[str], ServerMetrics]:
    metrics = ServerMetrics()
    worker = Worker(engine, SpeculationConfig(k=4), metrics, slots=slots)
    try:
        return asyncio.run(run_jobs(worker, engine, items, stagger)), metrics
    finally:
        worker.stop()


def test_requests_that_come_together_share_a_batch(engine):
    items = [(PROMPTS[i % 4] + " " * (i // 4), request(12 + 3 * i)) for i in range(6)]
    expected = [alone(engine, prompt, req) for prompt, req in items]
    got, metrics = serve(engine, items, stagger=False)
    assert got == [text for text, _ in expected]
    assert metrics.requests == {"ok": 6}
    assert metrics.target_forwards < sum(forwards for _, forwards in expected)  # forwards were shared
    assert metrics.request_steps >= sum(forwards - 1 for _, forwards in expected)  # each row's own steps, at least


def test_requests_that_come_while_one_runs_join_and_the_batch_grows(engine):
    items = [(PROMPTS[i % 4], request(24)) for i in range(5)]
    expected = [alone(engine, prompt, req) for prompt, req in items]
    got, metrics = serve(engine, items, stagger=True)
    assert got == [text for text, _ in expected]
    # The first request ran in a batch of one; the others could only share a larger one.
    assert metrics.target_forwards < 0.6 * sum(forwards for _, forwards in expected)


def test_a_seeded_sampled_request_runs_alone_between_greedy_ones(engine):
    items = [
        (PROMPTS[0], request(10)),
        (PROMPTS[1], request(10, temperature=0.8, seed=7)),
        (PROMPTS[2], request(10)),
    ]
    expected = [alone(engine, prompt, req)[0] for prompt, req in items]
    got, metrics = serve(engine, items, stagger=False)
    assert got == expected
    assert metrics.requests == {"ok": 3}


def test_a_request_that_does_not_fit_the_running_batch_makes_it_grow(engine):
    """The batch is sized for its requests (8 tokens here); a request for more joins a larger one, and the running
    request goes on unchanged."""
    items = [(PROMPTS[0], request(8)), (PROMPTS[1] * 4, request(40)), (PROMPTS[2], request(8))]
    expected = [alone(engine, prompt, req)[0] for prompt, req in items]
    got, metrics = serve(engine, items, stagger=True)
    assert got == expected
    assert metrics.requests == {"ok": 3}
