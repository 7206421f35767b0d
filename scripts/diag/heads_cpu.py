"""Chain against tree on the CPU: the zoo target alone, with the draft model's chain and with EAGLE trees.

    OMP_NUM_THREADS=1 python scripts/diag/heads_cpu.py [--rounds 3] [--trees 6,2,10 5,2,8]

The `heads` suite's prompts and lengths (4 held-out prompts x 48 new tokens, greedy, one thread), rounds
interleaved; per configuration: the median speedup over the target alone of the same round, tokens per target
forward, and draft / verify milliseconds per step (summed over the prompts' steps).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, load_model, make_drafter
from specdec.zoo.prompts import load_prompts


def run(engine: SpeculativeEngine, prompts: list[str], k: int) -> tuple[float, float, float, float, int]:
    generation = GenerationConfig(max_new_tokens=48, stop_at_eos=False)
    seconds = draft = verify = forwards = 0.0
    tokens = 0
    for prompt in prompts:
        start = time.perf_counter()
        out = engine.generate(prompt, generation, SpeculationConfig(k=k))
        seconds += time.perf_counter() - start
        m = out.metrics
        draft += m.draft_time_s
        verify += m.verify_time_s
        forwards += m.steps
        tokens += m.new_tokens
    return seconds, draft, verify, forwards, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trees", nargs="*", default=["6,2,10"], help="depth,top_k,budget of EAGLE trees")
    parser.add_argument("--no-chain", action="store_true")
    parser.add_argument("--eagle-chains", nargs="*", type=int, default=[], help="depths of EAGLE chains")
    args = parser.parse_args()
    torch.set_num_threads(1)
    target = load_model("zoo:tiny-code-target", device="cpu", dtype="float32")
    draft = load_model("zoo:tiny-code-draft", device="cpu", dtype="float32")
    prompts = load_prompts()[:4]
    engines: dict[str, tuple[SpeculativeEngine, int]] = {"target": (SpeculativeEngine(target), 4)}
    if not args.no_chain:
        engines["draft-chain-k4"] = (SpeculativeEngine(target, draft), 4)
    for tree in args.trees:
        depth, top_k, budget = (int(x) for x in tree.split(","))
        spec = make_drafter("eagle", depth=depth, top_k=top_k, budget=budget)
        engines[f"eagle-{depth}/{top_k}/{budget}"] = (SpeculativeEngine(target, spec), depth)
    for depth in args.eagle_chains:
        spec = make_drafter("eagle", tree="chain", depth=depth)
        engines[f"eagle-chain-{depth}"] = (SpeculativeEngine(target, spec), depth)
    for engine, k in engines.values():
        run(engine, prompts[:1], k)  # warm-up
    results: dict[str, list[tuple[float, float, float, float, int]]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, (engine, k) in engines.items():
            results[name].append(run(engine, prompts, k))
    base = [r[0] / r[4] for r in results["target"]]
    for name, rows in results.items():
        speedups = [b / (r[0] / r[4]) for b, r in zip(base, rows, strict=True)]
        steps = statistics.median(r[3] for r in rows)  # the runs are deterministic: steps do not vary
        print(
            f"{name:18s} speedup {statistics.median(speedups):.2f}x ({min(speedups):.2f}-{max(speedups):.2f})"
            f"  tok/fwd {statistics.median(r[4] / r[3] for r in rows):.2f}"
            f"  draft {statistics.median(r[1] for r in rows) / steps * 1e3:.2f} ms"
            f"  verify {statistics.median(r[2] for r in rows) / steps * 1e3:.2f}"
            f"  all {statistics.median(r[0] for r in rows) / steps * 1e3:.2f} ms/step"
        )


if __name__ == "__main__":
    main()
