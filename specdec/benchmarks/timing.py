"""Timing helpers shared by the benchmarks: device bandwidth, engine runs and Hugging Face references."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from specdec.config import GenerationConfig, SpeculationConfig
from specdec.device import synchronize
from specdec.engine import GenerationResult, SpeculativeEngine


@dataclass(frozen=True)
class Timed:
    """Median over repeats of one measured configuration."""

    tokens_per_second: float
    seconds: float  # median wall time of one run
    runs: int
    result: GenerationResult | None = None  # the last engine run (metrics, steps)


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


def time_call(call: Callable[[], int], device: torch.device, repeats: int = 2) -> Timed:
    """Time ``call`` (which returns the number of new tokens) after one warm-up run."""
    call()
    times, tokens = [], 0
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        tokens = call()
        synchronize(device)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return Timed(tokens_per_second=tokens / median, seconds=median, runs=repeats)


def hf_generate(
    model: PreTrainedModel, prompt: list[int], max_new_tokens: int, assistant: PreTrainedModel | None = None, k: int = 4
) -> Callable[[], int]:
    """A call of transformers' own `generate` (greedy; assisted generation with a fixed K when `assistant`)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    options: dict = {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens, "do_sample": False}
    if assistant is not None:
        assistant.generation_config.num_assistant_tokens = k
        assistant.generation_config.num_assistant_tokens_schedule = "constant"
        assistant.generation_config.assistant_confidence_threshold = 0.0
        options["assistant_model"] = assistant

    def call() -> int:
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **options)  # type: ignore[operator]
        return int(out.shape[1] - ids.shape[1])

    return call
