"""Where a run happened: the machine class that names its baseline file, the device models, the software versions
and the commit. Baselines record all of them; gating compares timings only where they match.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from specdec.device import mps_available


def slug(text: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"`` (letters, digits, ``_`` and ``-``)."""
    return re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-") or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (what CI's 2-core runner reports as 2)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name, where the platform says it (else the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """The vector ISA torch dispatches CPU kernels for (AVX2, AVX512, ...): it can change float results."""
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return str(get()) if get is not None else "unknown"


def device_model(device: str, threads: int | None = None) -> str:
    """What computes a case on ``device``: the GPU's name, or the CPU's name, ISA and intra-op threads."""
    base, _, index = device.partition(":")
    if base == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(int(index or 0))
    if base == "mps":
        return f"{cpu_model()} (mps)"
    return f"{cpu_model()} ({cpu_capability()}, {threads or torch.get_num_threads()} threads)"


def detect_machine_class() -> str:
    """A short stable name of this kind of machine: the GPU (``nvidia-h100-80gb-hbm3``, ``tesla-t4``), Apple
    silicon (``mps-apple-m2``), else the CPU architecture and core count (``cpu-x86_64-2c``)."""
    if torch.cuda.is_available():
        return slug(torch.cuda.get_device_name(0))
    if mps_available():
        return "mps-" + slug(cpu_model())
    return f"cpu-{slug(platform.machine())}-{usable_cores()}c"


@dataclass(frozen=True)
class Environment:
    """What a case's numbers depend on besides the code: recorded with every baseline entry."""

    machine_class: str
    device_model: str
    python: str
    torch: str
    transformers: str

    def same_software(self, other: Environment) -> bool:
        """Same torch and transformers on the same device model: greedy outputs are then bit-identical."""
        return (self.torch, self.transformers, self.device_model) == (
            other.torch,
            other.transformers,
            other.device_model,
        )

    def same_machine(self, other: Environment) -> bool:
        """Absolute times are comparable only on the same kind of machine with the same software."""
        return self.machine_class == other.machine_class and self.same_software(other)

    def differences(self, other: Environment) -> str:
        mine, theirs = asdict(self), asdict(other)
        return ", ".join(f"{k} {theirs[k]!r} -> {mine[k]!r}" for k in mine if mine[k] != theirs[k]) or "none"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Environment:
        return cls(**{name: str(data.get(name, "")) for name in cls.__dataclass_fields__})


def environment(machine_class: str, device: str, threads: int | None = None) -> Environment:
    return Environment(
        machine_class=machine_class,
        device_model=device_model(device, threads),
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=_version("transformers"),
    )


def software() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        **{name: _version(name) for name in ("torch", "transformers", "specdec", "pytest", "pytest-benchmark")},
    }


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cores": usable_cores(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
        info["gpu_driver"] = gpu_driver()
    if mps_available():
        info["mps"] = True
    return info


def benchmark_machine_info(machine_class: str | None = None) -> dict[str, Any]:
    """What pytest-benchmark's ``machine_info`` gets under ``"specdec"``: the machine class, :func:`machine_info`
    (CPU model and ISA, cores; GPUs, CUDA and driver) and :func:`software` (torch, transformers, ...)."""
    return {"machine_class": machine_class or detect_machine_class(), **machine_info(), **software()}


NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")


def parse_nvidia_driver(text: str) -> str | None:
    """The driver version in ``/proc/driver/nvidia/version``'s NVRM line (``"... Kernel Module  550.54.15  ..."``,
    or ``"... Open Kernel Module for x86_64  570.86.15  ..."``)."""
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            match = re.search(r"\s(\d{3,}\.\d+(?:\.\d+)?)\s", line + " ")
            return match.group(1) if match else None
    return None


@functools.cache
def gpu_driver() -> str | None:
    """The NVIDIA driver's version (from the kernel module, else ``nvidia-smi``), or None where neither says."""
    try:
        version = parse_nvidia_driver(NVIDIA_DRIVER_FILE.read_text())
    except OSError:
        version = None
    if version is not None:
        return version
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def commit_info(folder: Path, baselines: Path | None = None) -> dict[str, Any]:
    """The checked-out commit of ``folder`` (id, branch, dirty), or ``{"id": None}`` outside a git checkout.

    ``dirty``: a tracked file differs from the commit, not counting those under ``baselines`` (an update rewrites
    them; the code that measured is still the commit's)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"id": None}
    exclude: list[str] = []
    if baselines is not None and baselines.resolve().is_relative_to(folder.resolve()):
        inside = baselines.resolve().relative_to(folder.resolve())
        if inside.parts:  # not the checkout itself
            exclude = ["--", ".", f":(exclude){inside.as_posix()}"]
    status = git("status", "--porcelain", "--untracked-files=no", *exclude)
    return {"id": commit, "branch": git("rev-parse", "--abbrev-ref", "HEAD"), "dirty": bool(status)}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"
