"""What EAGLE drafting and tree verification cost at a real model's size, and the speed a given acceptance buys.

    python -m specdec.benchmarks.heads --out results/heads [--target zoo:synthetic/llama-3.1-8b@mix=0.5]
        [--device cuda] [--dtype bfloat16] [--nodes 16,32,64] [--chain 5] [--synthetic-chains 5,4,3]
        [--acceptance-length 4.0]

The target gets an EAGLE-3 head of its own shape with random weights (``specdec.heads.write_random_eagle3``: a
midlayer as wide as the target, a 32k draft vocabulary). On one random 128-token prompt, 256 new tokens:

- the engine's autoregressive run (the baseline every speedup here is over);
- the head drafting a chain of ``--chain`` tokens, greedy and lossless (a random head: almost nothing is accepted,
  so the run shows the cost of one step: drafting a chain and verifying ``chain + 1`` tokens);
- the head drafting EAGLE-2 dynamic trees of each ``--nodes`` budget (depth ``--depth``, ``--top-k`` children per
  expanded node): the cost of drafting a tree and of verifying its nodes in one target forward;
- chains of each ``--synthetic-chains`` length under the synthetic acceptance policy at ``--acceptance-length``
  tokens per target forward (the draft and the verification run for real, only the number kept is forced: NOT the
  target's output), which answers "how fast at this acceptance". The policy's schedule (vLLM's minimum-variance
  one) keeps ``floor(L - 1)`` drafts every step, so at L = 4.0 a chain of 3 drafts exactly what is kept and longer
  chains draft tokens that are never kept.

Each configuration runs once to warm up, then ``--repeats`` times (the median run is kept). Per-step draft and
verification times come from the run's metrics. Prints a table and writes ``heads_report.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from specdec import report
from specdec.benchmarks.timing import time_engine
from specdec.config import AcceptanceConfig, GenerationConfig, Policy, SpeculationConfig
from specdec.drafters import make_drafter
from specdec.engine import SpeculativeEngine
from specdec.heads import write_random_eagle3
from specdec.loading import load_model

SGLANG_EAGLE3_8B_H100 = 373.0  # tokens/s SGLang publishes for EAGLE-3 on Llama-3.1-8B, one H100, batch 1 (MT-bench)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m specdec.benchmarks.heads", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="zoo:synthetic/llama-3.1-8b@mix=0.5")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--nodes", default="16,32,64", help="tree node budgets (comma-separated)")
    parser.add_argument("--depth", type=int, default=6, help="tree depth (the engine's K)")
    parser.add_argument("--top-k", type=int, default=8, help="children per expanded node, nodes expanded per depth")
    parser.add_argument("--chain", type=int, default=5, help="chain length K of the random head's cost row")
    parser.add_argument("--synthetic-chains", default="5,4,3", help="chain lengths under the synthetic policy")
    parser.add_argument("--acceptance-length", type=float, default=4.0, help="synthetic tokens per target forward")
    parser.add_argument("--draft-vocab", type=int, default=32000, help="the head's draft vocabulary")
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/heads"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    target = load_model(args.target, device=args.device, dtype=args.dtype)
    log(f"target {args.target} on {target.device} ({target.dtype})")
    prompt = torch.randint(0, target.vocab_size, (args.prompt_length,), generator=torch.Generator().manual_seed(0))
    ids = prompt.tolist()
    greedy = GenerationConfig(max_new_tokens=args.max_new_tokens, stop_at_eos=False)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        heads = str(write_random_eagle3(target.model, Path(scratch) / "eagle3", args.draft_vocab))
        log(f"random EAGLE-3 head written ({args.draft_vocab} draft ids)")
        base = time_engine(SpeculativeEngine(target), ids, greedy, repeats=args.repeats)
        rows.append(_row("autoregressive", base, base.tokens_per_second))
        log(f"autoregressive: {base.tokens_per_second:.1f} tokens/s")
        chain = SpeculativeEngine(target, make_drafter("eagle", heads=heads, tree="chain", depth=args.chain))
        configs: list[tuple[str, SpeculativeEngine, SpeculationConfig]] = [
            (f"chain of {args.chain} (random head)", chain, SpeculationConfig(k=args.chain))
        ]
        for nodes in (int(n) for n in args.nodes.split(",")):
            drafter = make_drafter("eagle", heads=heads, depth=args.depth, top_k=args.top_k, budget=nodes)
            tree = SpeculativeEngine(target, drafter)
            configs.append((f"tree of {nodes} nodes (random head)", tree, SpeculationConfig(k=args.depth)))
        synthetic = AcceptanceConfig(policy=Policy.SYNTHETIC, acceptance_length=args.acceptance_length)
        for length in (int(n) for n in args.synthetic_chains.split(",")):
            chained = SpeculativeEngine(target, make_drafter("eagle", heads=heads, tree="chain", depth=length))
            configs.append(
                (
                    f"chain of {length}, synthetic acceptance length {args.acceptance_length:g}",
                    chained,
                    SpeculationConfig(k=length, acceptance=synthetic),
                )
            )
        for name, engine, speculation in configs:
            timed = time_engine(engine, ids, greedy, speculation, repeats=args.repeats)
            rows.append(_row(name, timed, base.tokens_per_second))
            log(f"{name}: {timed.tokens_per_second:.1f} tokens/s")
    columns = {
        "run": "run",
        "tokens_per_second": "tokens/s",
        "speedup": "speedup",
        "tokens_per_forward": "tokens/forward",
        "nodes_per_step": "nodes/step",
        "draft_ms_per_step": "draft ms/step",
        "verify_ms_per_step": "verify ms/step",
    }
    print(report.table([[r[key] for key in columns] for r in rows], list(columns.values())))
    synthetic_rows = [r for r in rows if "synthetic" in r["run"]]
    best = max(synthetic_rows, key=lambda r: r["speedup"])
    verdict = {
        "synthetic_speedups": {r["run"]: r["speedup"] for r in synthetic_rows},
        "best": best["run"],
        "synthetic_tokens_per_second": best["tokens_per_second"],
        "synthetic_speedup": best["speedup"],
        "at_least_2_5x": best["speedup"] >= 2.5,
        "above_sglang_eagle3_8b_h100": best["tokens_per_second"] > SGLANG_EAGLE3_8B_H100,
    }
    print(json.dumps(verdict))
    document = {
        "target": args.target,
        "device": str(target.device),
        "device_name": torch.cuda.get_device_name(target.device) if target.device.type == "cuda" else None,
        "dtype": str(target.dtype).removeprefix("torch."),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "rows": rows,
        "verdict": verdict,
    }
    (args.out / "heads_report.json").write_text(json.dumps(document, indent=1) + "\n")
    return 0


def _row(name: str, timed: Any, base_tokens_per_second: float) -> dict[str, Any]:
    m = timed.result.metrics
    steps = max(m.steps, 1)
    return {
        "run": name,
        "tokens_per_second": round(timed.tokens_per_second, 1),
        "speedup": round(timed.tokens_per_second / base_tokens_per_second, 3),
        "tokens_per_forward": round(m.mean_tokens_per_forward, 3),
        "nodes_per_step": round(m.mean_tree_size, 1) if m.mean_tree_size else None,
        "draft_ms_per_step": round(1000 * m.draft_time_s / steps, 3),
        "verify_ms_per_step": round(1000 * m.verify_time_s / steps, 3),
    }


if __name__ == "__main__":
    sys.exit(main())
