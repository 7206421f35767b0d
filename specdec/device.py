"""Device and dtype resolution, synchronisation and memory readings for CPU, CUDA and MPS."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from typing import Any

import torch

from specdec.errors import ConfigError, DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_SHORT_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist on this machine."""
    if isinstance(name, torch.device):
        return name
    base = name.split(":", 1)[0]
    if base not in DEVICE_CHOICES:
        raise DeviceError(f"unknown device {name!r}: expected one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was asked for, but this machine has no usable CUDA GPU; use --device cpu")
    if base == "mps" and not mps_available():
        raise DeviceError(f"device {name!r} was asked for, but MPS is not available here; use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA where supported (else float16), float16 on MPS, float32 on CPU."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}
    dtype = _DTYPES.get(aliases.get(name, name))
    if dtype is None:
        raise ConfigError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPE_CHOICES)}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a host clock read afterwards covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def read_to_host(values: torch.Tensor, meanwhile: Callable[[], None] | None = None) -> list[Any]:
    """``values.tolist()``, with ``meanwhile()`` run after the copy is queued and before the host waits for it: on a
    CUDA device the copy goes to pinned memory behind an event, so device work that ``meanwhile`` queues does not
    delay the read (``tolist`` alone would wait for the whole stream)."""
    if meanwhile is None or values.device.type != "cuda":
        if meanwhile is not None:
            meanwhile()
        return values.tolist()
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    meanwhile()
    copied.synchronize()
    return host.tolist()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_device_memory_bytes(device: torch.device) -> int | None:
    """Peak bytes allocated on the accelerator since the last reset (None on CPU, where see `peak_rss_bytes`)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (the CPU's 'device memory')."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
