"""Running a case: build its engine from cached models and time rounds over the prompt batches, through
pytest-benchmark's fixture when there is one (so its autosave, JSON and compare see the same rounds).

A case runs on the project's engine (``SpeculativeEngine``) or on transformers' own ``generate`` (``HFEngine``, the
case's ``engine``); both are a :class:`CaseEngine`, and nothing below ``build_engine`` tells them apart."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Protocol, cast

import torch

from pytest_specdec.cases import Case
from pytest_specdec.measurement import Measurement, Round
from pytest_specdec.models import ModelCache
from pytest_specdec.prompts import batches
from pytest_specdec.suite import SPECDEC
from specdec.config import GenerationConfig, SpeculationConfig
from specdec.device import synchronize
from specdec.engine import SpeculativeEngine
from specdec.hf_engine import HFEngine

OutOfMemoryError: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError that MPS and the CPU allocator raise."""
    return isinstance(error, (OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the duration (unchanged when None)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class CaseEngine(Protocol):
    """What a case runs on: ``generate`` returns the generated ``token_ids`` and ``metrics`` that
    :meth:`Measurement.from_rounds` reads (``specdec.metrics.RunMetrics`` or ``specdec.hf_engine.HFRunMetrics``)."""

    @property
    def device(self) -> torch.device: ...

    @property
    def vocab_size(self) -> int: ...

    def generate(self, prompts: Any, generation: GenerationConfig, speculation: SpeculationConfig | None) -> Any: ...


def build_engine(case: Case, models: ModelCache) -> CaseEngine:
    """The case's engine; loading errors (SpecdecError) propagate for the caller to skip or fail on."""
    keys = case.models
    target = models.get(keys[0])
    draft = models.get(keys[1]) if len(keys) > 1 else None
    if case.engine == SPECDEC:
        return SpeculativeEngine(target, case.draft_spec(draft))  # the case's drafting method (make_drafter)
    max_ngram = case.draft_options.get("max_ngram") if case.draft_method == "ngram" else None
    return HFEngine(target, case.engine, draft=draft, max_ngram=max_ngram)


def measure(case: Case, engine: CaseEngine, benchmark: Any | None = None) -> Measurement:
    """``case.warmup_rounds`` untimed and ``case.rounds`` timed passes over all prompt batches.

    With ``benchmark`` (pytest-benchmark's fixture) the rounds run through ``benchmark.pedantic``; without it (an
    autoregressive reference measured for a deselected case) the same loop runs here.
    """
    prompts = case.prompts.materialize(engine.vocab_size)
    prompt_batches = batches(prompts, case.batch_size)  # [n_batches][batch_size] prompts
    rounds: list[Round] = []

    def one_round() -> None:
        started = time.perf_counter()
        results = tuple(
            engine.generate(cast(Any, batch), case.generation, case.speculation)  # texts and/or id tuples
            for batch in prompt_batches
        )
        synchronize(engine.device)  # the clock stops after the device finished
        rounds.append(Round(results=results, seconds=time.perf_counter() - started))

    with cpu_threads(case.threads):
        if benchmark is not None:
            benchmark.pedantic(one_round, rounds=case.rounds, warmup_rounds=case.warmup_rounds, iterations=1)
        else:
            for _ in range(case.warmup_rounds + case.rounds):
                one_round()
    timed = rounds[case.warmup_rounds :] or rounds[-1:]  # --benchmark-disable runs a single untimed pass
    return Measurement.from_rounds(timed)
