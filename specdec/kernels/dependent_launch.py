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

``SPECDEC_PDL=0`` turns it off (for comparisons). Before Hopper, and in Triton's interpreter, it is off.
"""

from __future__ import annotations

import os
from functools import cache

import torch
import triton
import triton.language as tl

ENV_PDL = "SPECDEC_PDL"  # "0": launch every kernel after the one before it has completed

try:  # Triton 3.3 and later
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - an older Triton: PDL stays off
    gdc_launch_dependents = gdc_wait = None


@cache
def _supported(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch as dependents (and so must call :func:`await_previous`)."""
    if device.type != "cuda" or gdc_wait is None or os.environ.get(ENV_PDL, "1") == "0":
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return _supported(device.index if device.index is not None else torch.cuda.current_device())


@triton.jit
def await_previous(PDL: tl.constexpr):
    """Wait until the kernel before this one has completed (its writes visible), then let the next one launch."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
