"""A baseline record built by hand, for the tests of the gate and the baseline files."""

from __future__ import annotations

import dataclasses

from pytest_specdec.machine import Environment
from pytest_specdec.measurement import CaseRecord

HERE = Environment("cpu-x86_64-2c", "AMD EPYC (AVX512, 1 threads)", "3.11.7", "2.13.0+cpu", "5.23.0")
BASE = CaseRecord(
    digest="d",
    greedy=True,
    acceptance_rate=0.6,
    tokens_per_forward=2.0,
    tokens_per_second=300.0,
    speedup=1.5,
    output_hash="abc",
    new_tokens=192,
    peak_memory_bytes=None,
    environment=HERE,
)


def record(**changes) -> CaseRecord:
    """``BASE`` with ``changes``."""
    return dataclasses.replace(BASE, **changes)
