"""Timing helpers shared by the benchmarks: device bandwidth, engine runs and transformers' own generate."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from specdec.config import GenerationConfig, SpeculationConfig
from specdec.engine import GenerationResult, SpeculativeEngine
from specdec.hf_engine import HFEngine, HFResult


@dataclass(frozen=True)
class Timed:
    """Median over repeats of one measured configuration."""

    tokens_per_second: float
    seconds: float  # median wall time of one run
    runs: int
    result: GenerationResult | None = None  # the median engine run (metrics, steps)
    hf: HFResult | None = None  # the median run of transformers' generate (its metrics)


def copy_bandwidth(device: torch.device, gigabytes: float = 2.0, repeats: int = 10) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written (median of repeats)."""
    elements = int(gigabytes * 2**30) // 2
    source = torch.randn(elements, device=device, dtype=torch.bfloat16)
    target = torch.empty_like(source)
    target.copy_(source)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    del source, target
    torch.cuda.empty_cache()
    return 2 * elements * 2 / statistics.median(times)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters a forward reads once (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if parameter.data_ptr() not in seen:
            seen.add(parameter.data_ptr())
            total += parameter.numel() * parameter.element_size()
    return total


def time_engine(
    engine: SpeculativeEngine,
    prompt: list[int],
    generation: GenerationConfig,
    speculation: SpeculationConfig | None = None,
    repeats: int = 3,
) -> Timed:
    """Run once to warm up (graph capture, kernel compilation), then time ``repeats`` runs; the result kept is the
    median run's."""
    engine.generate(prompt, generation, speculation)
    results = sorted((engine.generate(prompt, generation, speculation) for _ in range(repeats)), key=_seconds)
    middle = results[len(results) // 2]  # the median run: its steps explain its speed (repeats is odd by default)
    median = statistics.median(_seconds(r) for r in results)
    return Timed(tokens_per_second=middle.metrics.new_tokens / median, seconds=median, runs=repeats, result=middle)


def _seconds(result: GenerationResult) -> float:
    return result.metrics.total_time_s


def time_hf(
    engine: HFEngine,
    prompt: list[int],
    generation: GenerationConfig,
    speculation: SpeculationConfig | None = None,
    warmups: int = 2,
    repeats: int = 3,
) -> Timed:
    """transformers' generate in one of its modes (``specdec.hf_engine``): ``warmups`` untimed runs (``hf-compile``
    compiles in the first and records its CUDA graphs in the next), then the median of ``repeats``. Raises
    :class:`~specdec.hf_engine.HFUnavailableError` where the mode cannot run here."""
    for _ in range(warmups):
        engine.generate(prompt, generation, speculation)
    results = sorted((engine.generate(prompt, generation, speculation) for _ in range(repeats)), key=_hf_seconds)
    median = statistics.median(_hf_seconds(r) for r in results)
    middle = results[len(results) // 2]
    return Timed(tokens_per_second=middle.metrics.new_tokens / median, seconds=median, runs=repeats, hf=middle)


def _hf_seconds(result: HFResult) -> float:
    return result.metrics.total_time_s
