"""The trained pair's evaluation, written to evaluation.json and the card: ``python -m specdec.zoo.recipe.evaluate``.

Measures, on this machine's CPU with ``--threads`` threads, float32:

- the cost of one decode step of each model (``cost.py``) and their ratio;
- engine-free greedy agreement and acceptance at each K (``agreement.py``) on the held-out prompts;
- speculative decoding through the engine (``specdec.SpeculativeEngine``): acceptance rate, tokens per target forward
  and tokens/s at each K, against the target alone, over the same prompts (skipped if the engine is not importable);
- with ``--cpu-training-estimate``, seconds per training step of both recipe loops on this CPU, and so the CPU time of
  the whole recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from specdec.zoo.prompts import load_prompts
from specdec.zoo.recipe.agreement import continuation_indicators, summarize
from specdec.zoo.recipe.card import write_card
from specdec.zoo.recipe.cost import decode_ms
from specdec.zoo.registry import TRAINED_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdec.zoo.recipe.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=str(TRAINED_DIR), help="the pair's folder (target/, draft/, prompts)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--ks", default="1,2,3,4,5,6")
    parser.add_argument("--prompts", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--no-engine", action="store_true", help="skip the engine measurement")
    parser.add_argument("--cpu-training-estimate", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started_load = [round(x, 2) for x in os.getloadavg()]
    folder = Path(args.dir)
    ks = [int(k) for k in args.ks.split(",")]
    texts = load_prompts(folder / "code-heldout.jsonl")[: args.prompts]
    command = " ".join(["python -m specdec.zoo.recipe.evaluate", *(sys.argv[1:] if argv is None else argv)])

    target = AutoModelForCausalLM.from_pretrained(folder / "target", dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(folder / "draft", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / "target")
    cpu = torch.device("cpu")
    target_ms, draft_ms = decode_ms(target, cpu, repeats=50), decode_ms(draft, cpu, repeats=50)
    evaluation: dict = {
        "command": command,
        "environment": _environment(args.threads),
        "prompts": len(texts),
        "max_new_tokens": args.max_new_tokens,
        "cost": {
            "threads": args.threads,
            "repeats": 50,
            "target_ms": round(target_ms, 3),
            "draft_ms": round(draft_ms, 3),
            "ratio": round(target_ms / draft_ms, 2),
        },
    }
    print(json.dumps(evaluation["cost"]), flush=True)
    prompt_ids = [tokenizer(text, return_tensors="pt").input_ids for text in texts]
    indicators = continuation_indicators(target, draft, prompt_ids, args.max_new_tokens)
    evaluation["simulated"] = [_rounded(summarize(indicators, k).__dict__) for k in ks]
    print(json.dumps(evaluation["simulated"]), flush=True)
    if not args.no_engine:
        evaluation["engine"] = measure_engine(str(folder), texts, args.max_new_tokens, ks, args.threads)
    if args.cpu_training_estimate:
        evaluation["cpu_training_estimate"] = estimate_cpu_training(folder, args.threads)
    evaluation["load_average"] = {"start": started_load, "end": [round(x, 2) for x in os.getloadavg()]}
    (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=1) + "\n")
    write_card(folder)
    print(json.dumps({k: v for k, v in evaluation.items() if k in ("engine", "cpu_training_estimate")}), flush=True)
    return 0


def measure_engine(folder: str, texts: list[str], max_new_tokens: int, ks: list[int], threads: int) -> dict | None:
    """Baseline and speculative runs through the engine over every prompt; None if the engine is missing."""
    try:
        from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, load_model
    except ImportError as error:
        print(f"engine not importable ({error}); skipping", flush=True)
        return None
    trained = Path(folder).resolve() == TRAINED_DIR.resolve()
    target_name = "zoo:tiny-code-target" if trained else f"{folder}/target"
    draft_name = "zoo:tiny-code-draft" if trained else f"{folder}/draft"
    target = load_model(target_name, device="cpu", dtype="float32")
    draft = load_model(draft_name, device="cpu", dtype="float32")
    generation = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, seed=0, stop_at_eos=False)

    def run(engine, speculation) -> dict:
        engine.generate(texts[0], generation, speculation)  # warm-up
        new_tokens = drafted = accepted = forwards = 0
        seconds = 0.0
        for text in texts:
            metrics = engine.generate(text, generation, speculation).metrics
            new_tokens += metrics.new_tokens
            drafted += metrics.drafted_tokens
            accepted += metrics.accepted_tokens
            forwards += metrics.target_forwards
            seconds += metrics.total_time_s
        return {
            "acceptance_rate": round(accepted / drafted, 3) if drafted else None,
            "mean_tokens_per_forward": round(new_tokens / max(forwards, 1), 2),
            "tokens_per_second": round(new_tokens / seconds, 1),
            "new_tokens": new_tokens,
        }

    baseline = run(SpeculativeEngine(target, None), None)
    print(json.dumps({"baseline": baseline}), flush=True)
    rows = []
    engine = SpeculativeEngine(target, draft)
    for k in ks:
        row = {"k": k, **run(engine, SpeculationConfig(k=k))}
        row["speedup"] = round(row["tokens_per_second"] / baseline["tokens_per_second"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: r["speedup"])
    return {
        "threads": threads,
        "target": target_name,
        "draft": draft_name,
        "baseline_tokens_per_second": baseline["tokens_per_second"],
        "rows": rows,
        "best_k": best["k"],
        "best_speedup": best["speedup"],
    }


def estimate_cpu_training(folder: Path, threads: int, steps: int = 1) -> dict:
    """Seconds per step of both recipe loops at the recorded recipe's sizes on this CPU (random tokens)."""
    from specdec.zoo.recipe.train import LlamaShape
    from specdec.zoo.recipe.trainer import LoopConfig, distil_draft, train_target

    recipe = json.loads((folder / "training.json").read_text())["recipe"]
    tokens = torch.randint(0, recipe["vocab_size"], (200_000,), generator=torch.Generator().manual_seed(0))
    target_shape, draft_shape = LlamaShape(**recipe["target"]), LlamaShape(**recipe["draft"])
    target = transformers.LlamaForCausalLM(target_shape.config(recipe["vocab_size"], 0, recipe["max_positions"]))
    draft = transformers.LlamaForCausalLM(draft_shape.config(recipe["vocab_size"], 0, recipe["max_positions"]))

    def per_step(fn) -> float:
        fn(1)  # warm-up
        start = time.perf_counter()
        fn(steps)
        return (time.perf_counter() - start) / steps

    def loop(n: int) -> LoopConfig:
        return LoopConfig(n, recipe["batch_size"], recipe["seq_len"], 1e-3, 1, log_every=10**9)

    generator = torch.Generator().manual_seed(0)
    target_s = per_step(lambda n: train_target(target, tokens, loop(n), generator, log=lambda _: None))
    draft_s = per_step(lambda n: distil_draft(draft, target, tokens, None, loop(n), generator, log=lambda _: None))
    hours = (recipe["target_steps"] * target_s + recipe["draft_steps"] * draft_s) / 3600
    return {
        "device": f"{platform.processor() or platform.machine()} CPU, {threads} threads",
        "target_seconds_per_step": round(target_s, 2),
        "draft_seconds_per_step": round(draft_s, 2),
        "target_steps_per_second": round(1 / target_s, 4),
        "draft_steps_per_second": round(1 / draft_s, 4),
        "estimated_hours": round(hours, 1),
    }


def _rounded(values: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()}


def _environment(threads: int) -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": f"{platform.machine()} CPU, {threads} threads (torch.set_num_threads)",
    }


if __name__ == "__main__":
    raise SystemExit(main())
