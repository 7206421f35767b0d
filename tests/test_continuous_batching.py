"""Continuous batching: requests join a running batch's free rows between steps (``engine.open_slots``,
``Generation.admit``) and leave it when they end; each request's greedy output is the one it gets alone
(docs/batching.md, "Requests that join a running batch")."""

from __future__ import annotations

import pytest
from test_rowwise import PROMPTS, drafter_for, perturbed
from tiny_models import loaded, make_model

import specdec.generation as generation_module
from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, make_drafter
from specdec.errors import ConfigError

BUDGETS = [20, 9, 32, 14, 25, 11]
REQUESTS = [*PROMPTS, PROMPTS[1][:5], PROMPTS[0][3:]]  # six requests through three slots
ROOM = 16  # prompt room of the slot batches below
MAX_NEW = 32


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def models(request):
    family = request.param
    target = make_model(family, seed=11, layers=4)
    return family, target, perturbed(target, 0.02, seed=12)


def serve(run, requests: list[list[int]], budgets: list[int], join_every: int = 2) -> tuple[list[list[int]], int]:
    """Drive a slot batch as a server does: one waiting request joins a free row every ``join_every`` steps (all
    of them at once when the batch is idle); every step's tokens go to the request that owns the row. Returns each
    request's tokens and the steps taken."""
    waiting = list(range(len(requests)))
    owner: dict[int, int] = {}
    out: list[list[int]] = [[] for _ in requests]
    steps = 0

    def collect() -> None:
        for row, tokens in enumerate(run.new_tokens()):
            out[owner[row]].extend(tokens)

    while waiting or any(run.batch.active):
        free = run.free_rows
        idle = not any(run.batch.active)
        if waiting and free and (idle or steps % join_every == 0):
            count = len(free) if idle else 1
            joining, waiting = waiting[:count], waiting[count:]
            rows = free[: len(joining)]
            run.admit(rows, [requests[j] for j in joining], [budgets[j] for j in joining])
            owner.update(zip(rows, joining, strict=False))
            collect()
        if any(run.batch.active):
            run.step()
            collect()
        steps += 1
    return out, steps


def alone(engine, requests, budgets, speculation) -> list[list[int]]:
    return [
        engine.generate(prompt, GenerationConfig(max_new_tokens=n), speculation).token_ids[0]
        for prompt, n in zip(requests, budgets, strict=True)
    ]


@pytest.mark.parametrize("decoder", ["generic", "fast"])
@pytest.mark.parametrize("drafter", ["none", "model", "ngram", "suffix", "layerskip"])
def test_requests_that_join_a_running_batch_get_their_own_output(models, decoder, drafter):
    family, target, draft = models
    engine = SpeculativeEngine(
        loaded(target, family), None if drafter == "none" else drafter_for(drafter, draft), decoder=decoder
    )
    speculation = SpeculationConfig(k=4)
    expected = alone(engine, REQUESTS, BUDGETS, speculation)
    with engine.open_slots(3, ROOM, GenerationConfig(max_new_tokens=MAX_NEW), speculation) as run:
        got, _ = serve(run, REQUESTS, BUDGETS)
    assert got == expected
    assert [len(tokens) for tokens in got] == BUDGETS


@pytest.mark.parametrize("decoder", ["generic", "fast"])
def test_joining_with_compactions(models, decoder, monkeypatch):
    """No hole room: joining prompts and uneven acceptance compact the columns often, in both caches."""
    monkeypatch.setattr(generation_module, "HOLE_ROOM", 0.0)
    family, target, draft = models
    engine = SpeculativeEngine(loaded(target, family), loaded(draft, "draft"), decoder=decoder)
    speculation = SpeculationConfig(k=4)
    expected = alone(engine, REQUESTS, BUDGETS, speculation)
    with engine.open_slots(3, ROOM, GenerationConfig(max_new_tokens=MAX_NEW), speculation) as run:
        got, _ = serve(run, REQUESTS, BUDGETS, join_every=1)
        assert run.compactions > 0
    assert got == expected


def test_a_row_stopped_early_frees_its_slot():
    """A request stopped mid-run (its client went away) leaves the batch at once; the next one joins its row."""
    target = make_model("llama", seed=11, layers=4)
    engine = SpeculativeEngine(loaded(target, "t"), loaded(perturbed(target, 0.02, seed=12), "draft"))
    speculation = SpeculationConfig(k=3)
    expected = alone(engine, PROMPTS[:3], [MAX_NEW] * 3, speculation)
    with engine.open_slots(2, ROOM, GenerationConfig(max_new_tokens=MAX_NEW), speculation) as run:
        run.admit([0, 1], PROMPTS[:2], [MAX_NEW, MAX_NEW])
        first = run.new_tokens()
        run.step()
        run.step()
        second = run.new_tokens()
        run.finish_row(0)
        assert run.free_rows == [0]
        assert run.new_tokens() == [[], []]  # a stopped row hands out nothing more
        run.admit([0], [PROMPTS[2]], [MAX_NEW])
        third = [list(row) for row in run.new_tokens()]
        while any(run.batch.active):
            run.step()
            for row, tokens in enumerate(run.new_tokens()):
                third[row].extend(tokens)
    assert first[0] + second[0] == expected[0][: len(first[0] + second[0])]
    assert first[1] + second[1] + third[1] == expected[1]
    assert third[0] == expected[2]


def test_a_request_that_meets_its_end_of_sequence_leaves():
    target = make_model("llama", seed=11, layers=4)
    engine = SpeculativeEngine(loaded(target, "t"), make_drafter("ngram"))
    free = engine.generate(PROMPTS[1], GenerationConfig(max_new_tokens=MAX_NEW)).token_ids[0]
    eos = free[5]  # a token the target really produces, early
    target.generation_config.eos_token_id = eos
    target.config.eos_token_id = eos
    engine = SpeculativeEngine(loaded(target, "t"), make_drafter("ngram"))
    speculation = SpeculationConfig(k=3)
    expected = alone(engine, REQUESTS, BUDGETS, speculation)
    assert any(tokens[-1] == eos and len(tokens) < n for tokens, n in zip(expected, BUDGETS, strict=True))
    with engine.open_slots(2, ROOM, GenerationConfig(max_new_tokens=MAX_NEW), speculation) as run:
        got, _ = serve(run, REQUESTS, BUDGETS)
    assert got == expected


def test_slot_batches_refuse_what_they_cannot_do():
    target = make_model("llama", seed=11, layers=4)
    engine = SpeculativeEngine(loaded(target, "t"))
    generation = GenerationConfig(max_new_tokens=8)
    with engine.open_slots(2, 4, generation) as run:
        with pytest.raises(ConfigError, match="prompt room of 4 tokens"):
            run.admit([0], [[1, 2, 3, 4, 5]], [4])
        with pytest.raises(ConfigError, match=r"outside this slot batch.s range 1\.\.8"):
            run.admit([0], [[1, 2]], [9])
        run.admit([0], [[1, 2]], [4])
        with pytest.raises(ConfigError, match=r"rows \[0\] are not free"):
            run.admit([0], [[3]], [4])
    with engine.start([[1, 2]], generation) as plain, pytest.raises(ConfigError, match="only a slot batch"):
        plain.admit([0], [[1]], [4])
