"""The zoo pair sampled on one device: speculative (K 4) against autoregressive, temperature 0.8, top-p 0.95.

    python scripts/diag/zoo_sampled.py [--device cuda] [--dtypes float32,bfloat16] [--prompts 32]
                                       [--max-new-tokens 128] [--seed 0]

Both runs are warmed up once, then timed in three interleaved rounds over the held-out code prompts (the median
kept); prints tokens/s of both, the speedup and the acceptance, per dtype. Issue 13 asks the speculative run to
be the faster on the GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, load_model
from specdec.device import synchronize
from specdec.zoo.prompts import load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16, float16")
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts (32: all; fewer is noisier)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="the generations' seed (acceptance varies with it)")
    args = parser.parse_args()
    prompts = load_prompts()[: args.prompts]
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, seed=args.seed)
    speculation = SpeculationConfig(k=4)
    for dtype in args.dtypes.split(","):
        target = load_model("zoo:tiny-code-target", device=args.device, dtype=dtype)
        draft = load_model("zoo:tiny-code-draft", device=target.device, dtype=dtype)
        engines = {"autoregressive": SpeculativeEngine(target), "speculative K 4": SpeculativeEngine(target, draft)}
        for engine in engines.values():  # warm-up
            for prompt in prompts:
                engine.generate(prompt, generation, speculation)
        times: dict[str, list[float]] = {name: [] for name in engines}
        counts: dict[str, tuple[int, int, int]] = {}
        for _ in range(3):  # rounds, the two engines interleaved
            for name, engine in engines.items():
                synchronize(target.device)
                started = time.perf_counter()
                results = [engine.generate(prompt, generation, speculation) for prompt in prompts]
                synchronize(target.device)
                times[name].append(time.perf_counter() - started)
                counts[name] = (
                    sum(r.metrics.new_tokens for r in results),
                    sum(r.metrics.accepted_tokens for r in results),
                    sum(r.metrics.drafted_tokens for r in results),
                )
        rates = {name: counts[name][0] / statistics.median(times[name]) for name in engines}
        for name, rate in rates.items():
            _, accepted, drafted = counts[name]
            print(
                f"{dtype} {name}: {rate:.1f} tokens/s, acceptance {accepted / drafted if drafted else float('nan'):.3f}"
            )
        print(f"{dtype} speedup: {rates['speculative K 4'] / rates['autoregressive']:.2f}x")


if __name__ == "__main__":
    main()
