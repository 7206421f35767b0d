"""Running a case: build its engine from cached models and time rounds over the prompt batches, through
pytest-benchmark's fixture when there is one (so its autosave, JSON and compare see the same rounds).

A case runs on the project's engine (``SpeculativeEngine``) or on transformers' own ``generate`` (``HFEngine``, the
case's ``engine``); both are a :class:`CaseEngine`, and nothing below ``build_engine`` tells them apart."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import torch

from pytest_specdec.cases import Case
from pytest_specdec.measurement import Measurement, Round
from pytest_specdec.models import ModelCache
from pytest_specdec.suite import SPECDEC
from specdec.config import GenerationConfig, SpeculationConfig
from specdec.device import synchronize
from specdec.engine import SpeculativeEngine
from specdec.hf_engine import HFEngine

T = TypeVar("T")

OutOfMemoryError: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def is_device_lost(error: BaseException) -> bool:
    """A CUDA error that leaves the context unusable (an illegal memory access, a device-side assert): every later
    call on that device raises it again, so nothing more can run there in this process."""
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        sign in text for sign in ("illegal memory access", "device-side assert", "unspecified launch failure")
    )


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


@dataclass(frozen=True)
class Reference:
    """The autoregressive case a speculative case is paired with, and its engine (the same loaded target)."""

    case: Case
    engine: CaseEngine


def measure(
    case: Case, engine: CaseEngine, benchmark: Any | None = None, reference: Reference | None = None
) -> Measurement:
    """``case.warmup_rounds`` untimed and ``case.rounds`` timed passes over all prompt batches.

    With ``benchmark`` (pytest-benchmark's fixture) the rounds run through ``benchmark.pedantic``; without it (an
    autoregressive reference measured for a deselected case) the same loop runs here. With ``reference``, every
    round of the case (warm-up and timed) follows one round of the autoregressive case on the same prompts (outside
    pytest-benchmark's clock, through its ``setup``): each timed pair saw the same machine state, and the pair's
    ratio of tokens/s is one sample of the speedup (``Measurement.paired_speedups``).
    """
    prompt_batches = case.prompts.batches(engine.vocab_size, case.batch_size)  # each within one category
    rounds: list[Round] = []
    reference_rounds: list[Round] = []

    def timed_pass(run_case: Case, run_engine: CaseEngine, into: list[Round]) -> None:
        started = time.perf_counter()
        results, seconds = [], []
        for batch in prompt_batches:
            begun = time.perf_counter()
            prompts = cast(Any, batch.prompts)  # texts and/or id tuples
            results.append(run_engine.generate(prompts, run_case.generation, run_case.speculation))  # synchronised
            seconds.append(time.perf_counter() - begun)
        synchronize(run_engine.device)  # the clock stops after the device finished
        into.append(
            Round(
                results=tuple(results),
                seconds=time.perf_counter() - started,
                categories=tuple(batch.category for batch in prompt_batches),
                batch_seconds=tuple(seconds),
            )
        )

    def one_round() -> None:
        timed_pass(case, engine, rounds)

    def reference_round() -> None:
        if reference is not None:
            timed_pass(reference.case, reference.engine, reference_rounds)

    with cpu_threads(case.threads):
        run_paired(case, benchmark, one_round, reference_round)
    timed, paired = timed_rounds(case, rounds, reference_rounds)
    return Measurement.from_rounds(timed, case.prompts.category_counts(), paired)


def run_paired(
    case: Case, benchmark: Any | None, one_round: Callable[[], None], reference_round: Callable[[], None]
) -> None:
    """``case.warmup_rounds`` then ``case.rounds`` rounds, each after one round of its reference: through
    pytest-benchmark's ``pedantic`` (the reference as its ``setup``, outside the clock) when there is a fixture."""
    if benchmark is not None:
        benchmark.pedantic(
            one_round, setup=reference_round, rounds=case.rounds, warmup_rounds=case.warmup_rounds, iterations=1
        )
        return
    for _ in range(case.warmup_rounds + case.rounds):
        reference_round()
        one_round()


def timed_rounds(case: Case, rounds: list[T], reference_rounds: list[T]) -> tuple[list[T], list[T]]:
    """The timed rounds (warm-up dropped) and the reference rounds paired with them ([] when they do not pair)."""
    timed = rounds[case.warmup_rounds :] or rounds[-1:]  # --benchmark-disable runs a single untimed pass
    paired = reference_rounds[case.warmup_rounds :] if len(reference_rounds) == len(rounds) else []
    return timed, paired[-len(timed) :] if paired else []
