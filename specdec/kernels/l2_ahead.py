"""Weights read into the L2 ahead of their product, while a latency-bound kernel leaves the memory idle.

At batch 1 a layer's attention reads a few hundred kilobytes of keys and values in a chain of dependent round trips
(about 7 us on an H100), while the products around it stream megabytes of weights at the memory's rate. During the
attention the memory system is nearly idle. So the attention kernel's programs also ask the L2 to fetch the first
bytes of the weights that the next products read (the o product's, then the MLP's), with Hopper's bulk prefetch
(``cp.async.bulk.prefetch.L2``: the L2 fetches the bytes from HBM; nothing comes back to the program, which goes on
at once). The products then find those bytes in the L2.

A prefetch is a hint: it changes no value anywhere, only where the bytes come from. It runs only on Hopper or later,
compiled (never in Triton's interpreter), and only up to a budget of bytes per attention launch:
``SPECDEC_L2_AHEAD_MB`` (0 turns it off). A product's last programs can do the same for the next product when they
are done, so that the memory streams through a kernel's tail and the launch gap after it: ``SPECDEC_L2_TAIL_MB``
bytes (0 turns it off). This module is the host side (which bytes, and whether at all); the device side is
``triton_gemv.prefetch_span``, called by the attention kernel and the fused GEMV.
"""

from __future__ import annotations

import os
from functools import cache

import torch

ENV_BUDGET = "SPECDEC_L2_AHEAD_MB"  # megabytes of weights prefetched per attention launch (0: off)
ENV_TAIL = "SPECDEC_L2_TAIL_MB"  # megabytes of the next product's weight prefetched at a product's end (0: off)
DEFAULT_BUDGET_MB = 0.0
DEFAULT_TAIL_MB = 0.0
CHUNK_BYTES = 8192  # bytes per prefetch instruction
MAX_SPANS = 3  # weights per attention launch (GPT-2's o, fc and proj)


@cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def _megabytes(device: torch.device, name: str, default: float) -> int:
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return 0
    if not _capable(device.index if device.index is not None else torch.cuda.current_device()):
        return 0
    setting = os.environ.get(name)
    try:
        megabytes = default if setting is None else float(setting)
    except ValueError:
        raise ValueError(f"{name}={setting!r} is not a number of megabytes (0 turns the prefetch off)") from None
    return max(0, int(megabytes * 2**20)) // 16 * 16


def budget_bytes(device: torch.device) -> int:
    """Bytes an attention launch on ``device`` prefetches: 0 where the bulk prefetch does not run."""
    return _megabytes(device, ENV_BUDGET, DEFAULT_BUDGET_MB)


def tail_bytes(device: torch.device) -> int:
    """Bytes a product on ``device`` prefetches at its end: 0 where the bulk prefetch does not run."""
    return _megabytes(device, ENV_TAIL, DEFAULT_TAIL_MB)


def spans(weights: tuple[torch.Tensor, ...], budget: int, skip: int = 0) -> list[tuple[torch.Tensor, int]]:
    """The (first element, bytes) to prefetch: the weights in the order they are read, as one run of bytes from
    byte ``skip`` on (what an earlier launch asked for), until ``budget`` bytes, at most ``MAX_SPANS`` of them. Each
    span starts and ends on a multiple of 16 bytes, as the bulk prefetch needs. Weights must be contiguous."""
    taken: list[tuple[torch.Tensor, int]] = []
    skip = skip // 16 * 16
    for weight in weights:
        if budget < 16 or len(taken) == MAX_SPANS:
            break
        if not weight.is_contiguous():
            raise ValueError(f"an L2 prefetch needs a contiguous weight, got strides {weight.stride()}")
        whole = nbytes(weight)
        if skip >= whole:
            skip -= whole
            continue
        size = min(whole - skip, budget) // 16 * 16
        if size:
            taken.append((weight.view(-1)[skip // weight.element_size() :], size))
        budget -= size
        skip = 0
    return taken


def tail_span(weight: torch.Tensor, budget: int, skip: int = 0) -> tuple[torch.Tensor, int] | None:
    """The span of ``weight`` a product prefetches at its end (``spans`` of it alone), or None."""
    taken = spans((weight,), budget, skip)
    return taken[0] if taken else None


def nbytes(weight: torch.Tensor) -> int:
    """The bytes a weight holds."""
    return weight.numel() * weight.element_size()
