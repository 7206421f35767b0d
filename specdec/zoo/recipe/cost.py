"""What one decode step of a model costs: the median time of a single-token forward with a KV cache."""

from __future__ import annotations

import statistics
import time

import torch
from transformers import DynamicCache, PreTrainedModel

from specdec.kv_cache import cache_keyword


@torch.no_grad()
def decode_ms(model: PreTrainedModel, device: torch.device, context: int = 64, repeats: int = 20) -> float:
    """Median milliseconds of one single-token forward after a ``context``-token prefill (eager transformers)."""
    cache_kwargs = {cache_keyword(model): DynamicCache(config=model.config)}
    model(input_ids=torch.zeros(1, context, dtype=torch.long, device=device), use_cache=True, **cache_kwargs)
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    times = []
    for _ in range(repeats + 3):
        _sync(device)
        start = time.perf_counter()
        model(input_ids=token, use_cache=True, **cache_kwargs)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:]) * 1e3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
