"""Batched speculation against batched autoregressive decoding: where per-row speculation stops paying.

    python -m specdec.benchmarks.batching --out results/batching [--target zoo:synthetic/llama-3.1-8b@mix=0.45]
        [--draft zoo:synthetic/llama-3-draft-116m@mix=0.45] [--batches 1,4,16,64] [--k 4] [--device cuda]

For each batch size B, B different random prompts (``--prompt-length`` tokens, seeded) are generated greedily to
``--max-new-tokens`` tokens per row, once by the engine without a draft and once with it at K (per-row acceptance:
each row keeps its own accepted prefix, ``docs/batching.md``). Each run is warmed up once, then timed ``--repeats``
times (the median is kept). Throughput counts every row's tokens; a row's latency is the time from the start to its
last token (the median run's rows: their median and the slowest), shorter than the batch's for a row that needs
fewer speculative steps. The crossover is the first batch size at which
speculation is no faster than the autoregressive run. Prints a table and writes ``batching_report.json``.

``--acceptance-rate a`` runs the speculative side under the synthetic acceptance policy instead (NOT lossless: the
draft and the verification run for real, only how many drafts each step keeps is forced, the same count in every
row), which separates what batching costs from how unevenly real rows accept: a real batch runs until its slowest
row is done.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from specdec import report
from specdec.config import AcceptanceConfig, GenerationConfig, Policy, SpeculationConfig
from specdec.device import synchronize
from specdec.engine import SpeculativeEngine
from specdec.generation import GenerationResult
from specdec.loading import load_model


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m specdec.benchmarks.batching", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="zoo:synthetic/llama-3.1-8b@mix=0.45")
    parser.add_argument("--draft", default="zoo:synthetic/llama-3-draft-116m@mix=0.45")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batches", default="1,4,16,64", help="batch sizes (comma-separated)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--acceptance-rate", type=float, default=None, help="synthetic acceptance (not lossless)")
    parser.add_argument("--out", type=Path, default=Path("results/batching"))
    return parser.parse_args(argv)


def timed(
    engine: SpeculativeEngine,
    prompts: list[list[int]],
    generation: GenerationConfig,
    speculation: SpeculationConfig,
    repeats: int,
) -> tuple[float, GenerationResult]:
    """(median seconds, the median run's result) of ``repeats`` runs after one warm-up run."""
    engine.generate(prompts, generation, speculation)
    runs = []
    for _ in range(repeats):
        synchronize(engine.device)
        started = time.perf_counter()
        result = engine.generate(prompts, generation, speculation)
        synchronize(engine.device)
        runs.append((time.perf_counter() - started, result))
    runs.sort(key=lambda run: run[0])
    return statistics.median(seconds for seconds, _ in runs), runs[len(runs) // 2][1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = load_model(args.target, device=args.device, dtype=args.dtype)
    draft = load_model(args.draft, device=target.device, dtype=args.dtype)
    plain, speculative = SpeculativeEngine(target), SpeculativeEngine(target, draft)
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens)
    random = torch.Generator().manual_seed(0)
    acceptance = AcceptanceConfig()
    if args.acceptance_rate is not None:
        acceptance = AcceptanceConfig(policy=Policy.SYNTHETIC, acceptance_rate=args.acceptance_rate)
    speculation = SpeculationConfig(k=args.k, acceptance=acceptance)
    rows: list[dict[str, Any]] = []
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = torch.randint(0, target.vocab_size, (batch, args.prompt_length), generator=random).tolist()
        log(f"batch {batch}: autoregressive")
        ar_seconds, ar = timed(plain, prompts, generation, SpeculationConfig(), args.repeats)
        log(f"batch {batch}: speculative, K {args.k}")
        sd_seconds, sd = timed(speculative, prompts, generation, speculation, args.repeats)
        ar_tokens = sum(len(ids) for ids in ar.token_ids)
        sd_tokens = sum(len(ids) for ids in sd.token_ids)
        rows.append(
            {
                "batch": batch,
                "ar_tokens_per_s": ar_tokens / ar_seconds,
                "sd_tokens_per_s": sd_tokens / sd_seconds,
                "speedup": (sd_tokens / sd_seconds) / (ar_tokens / ar_seconds),
                "acceptance": sd.metrics.acceptance_rate,
                "tokens_per_forward": sd.metrics.mean_tokens_per_forward,
                # a synthetic acceptance keeps drafts by a coin, not by the target: its output is not the target's
                "same_output": sd.token_ids == ar.token_ids if args.acceptance_rate is None else None,
                "ar_row_latency_s": list(ar.metrics.row_latency_s),
                "sd_row_latency_s": list(sd.metrics.row_latency_s),
            }
        )
        log(f"batch {batch}: {rows[-1]}")
    crossover = next((row["batch"] for row in rows if row["speedup"] <= 1.0), None)
    table = [
        (
            r["batch"], f"{r['ar_tokens_per_s']:.1f}", f"{r['sd_tokens_per_s']:.1f}", f"{r['speedup']:.2f}x",
            f"{r['acceptance']:.3f}", f"{r['tokens_per_forward']:.2f}", report.row_latency(r["ar_row_latency_s"]),
            report.row_latency(r["sd_row_latency_s"]),
            "n/a (synthetic acceptance)" if r["same_output"] is None else r["same_output"],
        )
        for r in rows
    ]  # fmt: skip
    headers = ["batch", "autoregressive tok/s", f"speculative K {args.k} tok/s", "speedup", "acceptance", "tok/fwd"]
    latency = ["autoregressive row latency s (p50 / max)", "speculative row latency s (p50 / max)"]
    print(report.table(table, [*headers, *latency, "same output"]))
    print(f"crossover (first batch size where speculation does not pay): {crossover or 'none measured'}")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "target": args.target, "draft": args.draft, "k": args.k, "synthetic_acceptance_rate": args.acceptance_rate,
        "rows": rows, "crossover": crossover,
    }  # fmt: skip
    (args.out / "batching_report.json").write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
