"""A/B of the engine's CPU speed: run it from two checkouts, interleaved, and compare the medians.

    OMP_NUM_THREADS=1 python scripts/cpu_ab.py new
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/old-checkout python scripts/cpu_ab.py old

The zoo pair on the CPU, one thread, 64 new tokens from "def parse_args(", greedy: the median of 5 runs after one
warm-up, autoregressive and speculative at K=4.
"""

from __future__ import annotations

import statistics
import sys

import torch

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, load_model

torch.set_num_threads(1)
target = load_model("zoo:tiny-code-target", device="cpu", dtype="float32")
draft = load_model("zoo:tiny-code-draft", device="cpu", dtype="float32")
generation = GenerationConfig(max_new_tokens=64, stop_at_eos=False)
for name, engine in (("ar", SpeculativeEngine(target)), ("spec", SpeculativeEngine(target, draft))):
    engine.generate("def parse_args(", generation, SpeculationConfig(k=4))
    speeds = [
        engine.generate("def parse_args(", generation, SpeculationConfig(k=4)).metrics.tokens_per_second
        for _ in range(5)
    ]
    print(sys.argv[1] if len(sys.argv) > 1 else "this", name, f"{statistics.median(speeds):.1f} tok/s")
