"""Programmatic dependent launch (Hopper and later): a kernel starts while the one before it in the stream finishes.

At batch 1 a decoding step is a chain of short kernels, each one's input the output of the one before, and each
one idles the memory system while its first loads are in flight. With programmatic dependent launch (PDL) a kernel
is launched as soon as every program of the kernel before it has called ``launch_dependents``. Until it calls
``gdc_wait`` it may only do what does not depend on the kernels before it: a product of ``triton_gemv`` issues
the loads of its first weight tile there, so that they overlap the end of the kernel before it. Weights are read
before the wait, so a weight must not be written by the kernel just before its product (the models' weights are
written once, when they load).

:func:`await_previous` is the barrier: every kernel launched with ``launch_pdl=True`` calls it before it reads
anything else that an earlier kernel may have written, and before it writes anything; it then lets the next kernel
launch, so that at most one kernel runs ahead. Each kernel completes only after the one before it has, so
completion is transitive along the chain.

It is off unless ``SPECDEC_PDL=1``: on an H200 (docs/performance.md, twelfth session) it made the 1B shape about
2% and GPT-2's sampled decoding about 7% faster, and the 8B shape 5% slower. Before Hopper, and in Triton's
interpreter, it is always off.
"""

from __future__ import annotations

import os
from functools import cache

import torch
import triton
import triton.language as tl

ENV_PDL = "SPECDEC_PDL"  # "1": launch the decode chain's kernels as dependents where the device supports it

try:  # Triton 3.3 and later
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - an older Triton: PDL stays off
    gdc_launch_dependents = gdc_wait = None


@cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def supported(device: torch.device) -> bool:
    """Whether kernels on ``device`` can launch as dependents (Hopper or later, Triton 3.3 or later, compiled)."""
    if device.type != "cuda" or gdc_wait is None or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


def enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch as dependents (and so must call :func:`await_previous`)."""
    return os.environ.get(ENV_PDL, "0") == "1" and supported(device)


@triton.jit
def await_previous(PDL: tl.constexpr):
    """Wait until the kernel before this one has completed (its writes visible), then let the next one launch."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
