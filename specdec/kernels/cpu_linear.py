"""``x @ W.T (+ b)`` for CPU float32 weights, faster than ``F.linear`` at the few rows a decoding step multiplies.

torch's CPU ``F.linear`` calls MKL's sgemm with the [N, K] weight transposed. On the CI machine (AMD EPYC, one
thread) that call runs two to three times below what the same weight allows (docs/performance.md, seventh
session, "CPU products through copies of the weights"), so a weight used here gets a copy made once, on first
use, in the layout that is fast for the rows at hand:

- one or two rows (an autoregressive step, a draft head's few nodes): ``x @ W_t`` with a contiguous [K, N] copy;
- three rows or more (a verification, a prefill): oneDNN's linear with the weight reordered once into oneDNN's
  blocked layout (``torch.ops.mkldnn``). Each output row is then computed the same way whatever the number of rows
  (tested), so verifying K + 1 tokens scores each of them exactly as a verification of any other width would.

A copy lives while its weight does and is rebuilt when the weight changes (its version counter or its storage;
writes through ``weight.data`` are not seen, so change a weight in place through the weight itself). Copies stop
being made past ``MAX_COPY_BYTES`` in all (the weights without one keep ``F.linear``). Everything else takes
``F.linear``: other devices and dtypes, and a product that autograd records (training).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

MAX_COPY_BYTES = 2**30  # all copies together
PACKED_MIN_ROWS = 3  # fewer rows take the transposed copy
_PACK_ROWS_HINT = 16  # the row count oneDNN's reorder is told to expect (its layout suits 3 to 64 rows)


@dataclass
class _Copies:
    weight: weakref.ref[torch.Tensor]
    version: tuple[int, int]  # the weight's version counter and data pointer when copied
    transposed: torch.Tensor | None = None  # [K, N]
    packed: torch.Tensor | None = None  # oneDNN's blocked layout of [N, K]
    sizes: list[int] = field(default_factory=list)


_copies: dict[int, _Copies] = {}
_bytes = [0]
_packing = [hasattr(torch.ops, "mkldnn") and torch.backends.mkldnn.is_available()]


def _version(weight: torch.Tensor) -> tuple[int, int]:
    """What changes when the weight does: its version counter (in-place writes) and its data pointer (``.data``
    replaced, as ``Module.to`` does). Writes through ``weight.data`` bump neither: they are not seen."""
    try:
        counter = weight._version
    except RuntimeError:  # an inference tensor: no version counter, and it cannot change outside inference mode
        counter = -1
    return counter, weight.data_ptr()


def _forget(key: int) -> None:
    entry = _copies.pop(key, None)
    if entry is not None:
        _bytes[0] -= sum(entry.sizes)


def _entry(weight: torch.Tensor) -> _Copies:
    key = id(weight)
    entry = _copies.get(key)
    version = _version(weight)
    if entry is not None and entry.weight() is weight:
        if entry.version == version:
            return entry
        _bytes[0] -= sum(entry.sizes)  # changed in place: its copies are stale
        entry.version, entry.transposed, entry.packed, entry.sizes = version, None, None, []
        return entry
    entry = _Copies(weakref.ref(weight), version)
    _copies[key] = entry
    weakref.finalize(weight, _forget, key)
    return entry


def _make(entry: _Copies, weight: torch.Tensor, packed: bool) -> torch.Tensor | None:
    size = weight.numel() * weight.element_size()
    if _bytes[0] + size > MAX_COPY_BYTES:
        return None
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor, whatever mode the first call runs in
        if not packed:
            copy = weight.detach().t().contiguous()
        else:
            try:
                copy = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_ROWS_HINT)
            except (RuntimeError, AttributeError):  # a build without oneDNN's linear: transposed copies only
                _packing[0] = False
                return None
    _bytes[0] += size
    entry.sizes.append(size)
    return copy


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, transposed: bool = False
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x [..., K], weight [N, K], bias [N] -> [..., N], through a fast copy of the
    weight where one applies (see the module docstring); equal to ``F.linear`` up to float32 rounding.

    ``transposed``: the transposed copy whatever the number of rows (a caller that multiplies few rows most of the
    time and sometimes more, and wants one copy of the weight in the CPU's caches rather than two)."""
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        return F.linear(x, weight, bias)
    flat = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])  # [M, K] (no reshape op for what is already 2-D)
    rows = flat.shape[0]
    entry = _entry(weight)
    out = None
    if rows >= PACKED_MIN_ROWS and _packing[0] and not transposed:
        if entry.packed is None:
            entry.packed = _make(entry, weight, packed=True)
        if entry.packed is not None:
            out = torch.ops.mkldnn._linear_pointwise(flat, entry.packed, bias, "none", [], "")  # [M, N]
    elif rows < PACKED_MIN_ROWS or transposed:
        if entry.transposed is None:
            entry.transposed = _make(entry, weight, packed=False)
        if entry.transposed is not None:
            out = torch.mm(flat, entry.transposed) if bias is None else torch.addmm(bias, flat, entry.transposed)
    if out is None:
        return F.linear(x, weight, bias)
    return out if x.dim() == 2 else out.view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (the same parameters and state-dict names) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
