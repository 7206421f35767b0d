"""Programmatic dependent launch (Hopper and later): a kernel starts while the one before it in the stream finishes.

At batch 1 a decoding step is a chain of short kernels, each one's input the output of the one before, and each
one idles the memory system while it ramps up and drains. With programmatic dependent launch (PDL) a kernel is
launched as soon as every program of the kernel before it has called ``launch_dependents``; it may then do work
that does not depend on that kernel (here: fetch its weights into L2) and must call ``gdc_wait`` before it reads
anything an earlier kernel wrote or writes anything. :func:`await_previous` is that barrier: every kernel launched
with ``launch_pdl=True`` calls it before touching activations, and then lets the next kernel launch, so that at most
one kernel runs ahead. Because each kernel waits for the one before it to complete, completion is transitive.

``SPECDEC_PDL=0`` turns it off (for comparisons). On a CPU (the Triton interpreter) and before Hopper it is off.
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


@triton.jit
def prefetch_l2(ptrs):
    """Bring the 128-byte lines at ``ptrs`` (a block of pointers) into L2, to be read soon; a hint, so it is safe
    before :func:`await_previous` whatever the lines hold."""
    tl.inline_asm_elementwise(
        "mov.u32 $0, 0;\n\tprefetch.global.L2::evict_last [$1];", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )


ENV_PREFETCH_MB = "SPECDEC_PDL_PREFETCH_MB"  # weights a product fetches into L2 before its wait (default 16 MB)
LINE_BYTES = 128


def prefetch_lines(weight: torch.Tensor, pdl: bool) -> tuple[int, int]:
    """(elements per 128-byte line, lines per weight row to prefetch): the start of each row of a [N, K] weight,
    a power of two of lines, at most the budget in all (L2 is 50 MB on an H100, and the kernel before this one is
    still reading its own). (line, 0) without PDL."""
    line = max(1, LINE_BYTES // weight.element_size())
    budget = int(float(os.environ.get(ENV_PREFETCH_MB, "16")) * 2**20)
    lines = min(weight.shape[1] // line, budget // (weight.shape[0] * LINE_BYTES)) if pdl else 0
    return line, (1 << (lines.bit_length() - 1)) if lines > 0 else 0
