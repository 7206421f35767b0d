"""The persistent step compiles for an H100/H200 (sm_90a) at its default shape and with each of its options, and so
does the decoder's fused GEMV for each kind of product, on a machine without a GPU (Triton's compiler and its ptxas:
``scripts/diag/compile_sm90.py``).

Triton's interpreter, which runs the step's tests on a CPU, does not compile the kernel: a version whose loop-carried
value changed shape passed every interpreter test and failed to compile on the device. Needs triton with its NVIDIA
backend (the pip wheel); CI installs no triton, so there this is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _has_compiler() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except Exception:
        return False
    return True


pytestmark = pytest.mark.skipif(not _has_compiler(), reason="needs triton with its NVIDIA backend (pip install triton)")

# Each option of PersistentShape at least once, on GPT-2's kernel and the Llama family's.
VARIANTS = (
    "",
    "stages=0,early_tiles=2",
    "early_tiles=4,tile_elements=4096,programs_per_sm=2",
    "fused_mlp=1,stages=0,early_tiles=2",
    "fused_mlp=1,mlp_tile_elements=8192",
    "phase_launches=1,merge_in_attention=1",
    "merge_in_attention=1,max_splits=8",
    "warps=8,tile_elements=16384,head_tile_elements=16384,stages=0",
    "timeline=1",
)


def test_the_step_with_each_option_and_the_decoders_gemv_compile_for_sm90():
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts/diag/compile_sm90.py"), "gpt2,1b,gemv", *VARIANTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    compiled = [line.split()[0] for line in run.stdout.splitlines() if "registers" in line]
    assert (compiled.count("gpt2"), compiled.count("1b")) == (len(VARIANTS), len(VARIANTS)), run.stdout
    assert compiled.count("gemv") >= 9, run.stdout  # a product of each kind (compile_sm90.GEMV)
