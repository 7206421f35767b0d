"""The zoo pair sampled on one device: speculative (K 4) against autoregressive, temperature 0.8, top-p 0.95.

    python scripts/diag/zoo_sampled.py [--device cuda] [--prompts 8] [--max-new-tokens 128]

Each run is warmed up once, then timed three times over the held-out code prompts (the median kept); prints
tokens/s of both, the speedup and the acceptance. Issue 13 asks the speculative run to be the faster on the GPU.
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
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    target = load_model("zoo:tiny-code-target", device=args.device, dtype="float32")
    draft = load_model("zoo:tiny-code-draft", device=target.device, dtype="float32")
    prompts = load_prompts()[: args.prompts]
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, seed=0)
    for name, engine in (
        ("autoregressive", SpeculativeEngine(target)),
        ("speculative K 4", SpeculativeEngine(target, draft)),
    ):
        speculation = SpeculationConfig(k=4)
        for prompt in prompts:  # warm-up
            engine.generate(prompt, generation, speculation)
        times, tokens, accepted, drafted = [], 0, 0, 0
        for _ in range(3):
            synchronize(target.device)
            started = time.perf_counter()
            results = [engine.generate(prompt, generation, speculation) for prompt in prompts]
            synchronize(target.device)
            times.append(time.perf_counter() - started)
            tokens = sum(r.metrics.new_tokens for r in results)
            accepted = sum(r.metrics.accepted_tokens for r in results)
            drafted = sum(r.metrics.drafted_tokens for r in results)
        rate = tokens / statistics.median(times)
        print(f"{name}: {rate:.1f} tokens/s, acceptance {accepted / drafted if drafted else float('nan'):.3f}")
        if name == "autoregressive":
            baseline = rate
    print(f"speedup: {rate / baseline:.2f}x")


if __name__ == "__main__":
    main()
