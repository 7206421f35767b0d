"""The steppable generation: streaming, stepping by hand, and one engine shared by several threads."""

from __future__ import annotations

import gc
import itertools
import threading

import pytest
import torch
from tiny_models import loaded, make_model

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, make_drafter
from specdec.errors import ConfigError

PROMPTS = [[5, 17, 99, 240, 31, 5, 17], [250, 4, 4, 61, 9, 13, 200, 77], [42, 42, 42]]


@pytest.fixture(scope="module")
def models():
    return make_model("llama", seed=1, layers=2), make_model("llama", seed=2, layers=1)


def engines(models):
    target, draft = models
    return {
        "ar": SpeculativeEngine(loaded(target, "t")),
        "model": SpeculativeEngine(loaded(target, "t"), loaded(draft, "d")),
        "ngram": SpeculativeEngine(loaded(target, "t"), make_drafter("ngram")),
    }


@pytest.mark.parametrize("name", ["ar", "model", "ngram"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_stream_yields_exactly_what_generate_returns(models, name, temperature):
    engine = engines(models)[name]
    config = GenerationConfig(max_new_tokens=24, temperature=temperature, seed=3)
    speculation = SpeculationConfig(k=3)
    for prompts in (PROMPTS[0], PROMPTS):
        want = engine.generate(prompts, config, speculation).token_ids
        chunks = list(engine.stream(prompts, config, speculation))
        assert len(chunks) > 1  # tokens arrive step by step
        got = [list(itertools.chain.from_iterable(chunk[row] for chunk in chunks)) for row in range(len(want))]
        assert got == want


def test_stream_stops_at_end_of_sequence(models):
    target, _ = models
    engine = SpeculativeEngine(loaded(target, "t"))
    free = engine.generate(PROMPTS[0], GenerationConfig(max_new_tokens=12, stop_at_eos=False)).token_ids[0]
    target.generation_config.eos_token_id = free[5]  # the sixth token becomes the end of sequence
    try:
        stopping = SpeculativeEngine(loaded(target, "t"))
        chunks = stopping.stream(PROMPTS[0], GenerationConfig(max_new_tokens=12))
        streamed = list(itertools.chain.from_iterable(chunk[0] for chunk in chunks))
        assert streamed[-1] == free[5] and len(streamed) <= 6
        assert streamed == stopping.generate(PROMPTS[0], GenerationConfig(max_new_tokens=12)).token_ids[0]
    finally:
        target.generation_config.eos_token_id = 2


def test_stepping_by_hand_equals_generate(models):
    engine = engines(models)["model"]
    config, speculation = GenerationConfig(max_new_tokens=16), SpeculationConfig(k=2)
    want = engine.generate(PROMPTS[1], config, speculation)
    with engine.start(PROMPTS[1], config, speculation) as run:
        steps = 0
        while not run.done:
            run.step()
            steps += 1
        result = run.result()
    assert result.token_ids == want.token_ids and steps == want.metrics.steps


def test_a_second_unfinished_generation_in_one_thread_is_refused(models):
    engine = engines(models)["ar"]
    run = engine.start(PROMPTS[0], GenerationConfig(max_new_tokens=4))
    with pytest.raises(ConfigError, match="already has an unfinished generation"):
        engine.generate(PROMPTS[1])
    run.close()
    with pytest.raises(ConfigError, match="closed"):
        run.step()
    assert engine.generate(PROMPTS[1], GenerationConfig(max_new_tokens=4)).token_ids  # the engine is free again


def test_a_generation_that_fails_to_build_gives_the_engine_back_once(models, monkeypatch):
    """The engine takes its lock back when a generation's constructor raises; the half-built generation, collected
    later, must not release it again (by then another generation may hold it)."""
    engine = engines(models)["ar"]
    monkeypatch.setenv("SPECDEC_AR_CHUNK", "sixteen")  # refused in the constructor
    with pytest.raises(ConfigError, match="SPECDEC_AR_CHUNK") as caught:
        engine.generate(PROMPTS[0], GenerationConfig(max_new_tokens=4))
    monkeypatch.delenv("SPECDEC_AR_CHUNK")
    with engine.start(PROMPTS[0], GenerationConfig(max_new_tokens=4)) as run:
        del caught  # its traceback held the half-built generation
        gc.collect()
        assert engine._lock.locked()  # still this run's
        while not run.done:
            run.step()


@pytest.mark.parametrize("name", ["ar", "model", "ngram"])
def test_threads_sharing_one_engine_get_the_single_threaded_outputs(models, name):
    engine = engines(models)[name]
    configs = [
        (PROMPTS[i % 3], GenerationConfig(max_new_tokens=12 + i % 5, temperature=0.8 * (i % 2), seed=i))
        for i in range(8)
    ]
    speculation = SpeculationConfig(k=3)
    expected = [engine.generate(p, c, speculation).token_ids for p, c in configs]
    threads, calls = 4, 6
    results: dict[tuple[int, int], list[list[int]]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(index: int) -> None:
        barrier.wait()
        try:
            for call in range(calls):
                which = (index + call) % len(configs)
                prompt, config = configs[which]
                if call % 2:
                    chunks = list(engine.stream(prompt, config, speculation))
                    results[(index, call)] = [list(itertools.chain.from_iterable(c[0] for c in chunks))]
                else:
                    results[(index, call)] = engine.generate(prompt, config, speculation).token_ids
        except BaseException as error:  # reported below
            errors.append(error)

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=120)
    finally:
        torch.set_num_threads(torch_threads)
    assert not errors, errors
    assert len(results) == threads * calls
    for (index, call), token_ids in results.items():
        assert token_ids == expected[(index + call) % len(configs)], (index, call)
