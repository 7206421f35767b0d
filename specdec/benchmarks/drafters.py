"""Which drafting method is fastest for a target, on this machine, against Hugging Face in the same run.

    python -m specdec.benchmarks.drafters --out results/drafters [--target zoo:tiny-code-target]
        [--draft zoo:tiny-code-draft] [--prompts zoo:code-repeat,zoo:code-heldout] [--count 8] [--ks 2,4,8]

For each prompt set: the engine's autoregressive run, every drafting method at every K, and transformers' own
`generate` through ``specdec.hf_engine`` (``hf-static``: a static cache; ``hf-lookup``: prompt lookup,
``prompt_lookup_num_tokens=K``; ``hf-assisted``: assisted generation with the same draft model), all greedy, on the
same prompts, in one process. Each configuration runs every prompt once to warm up, then ``--repeats`` times; its
speed is total new tokens over the median total time. transformers' rows carry their tokens per target forward and,
for lookup and assisted generation, the acceptance read from its candidate generator. Prints a table per prompt set
and writes ``drafters_report.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

from specdec import report
from specdec.config import GenerationConfig, SpeculationConfig
from specdec.device import synchronize
from specdec.drafters import make_drafter
from specdec.engine import SpeculativeEngine
from specdec.hf_engine import HF_ASSISTED, HF_LOOKUP, HF_STATIC, HFEngine
from specdec.loading import LoadedModel, load_model
from specdec.zoo.prompts import load_prompt_set

METHODS = ("model", "ngram", "suffix", "layerskip")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed_total(run: Callable[[list[int]], int], prompts: list[list[int]], repeats: int, device: torch.device) -> float:
    """Median over ``repeats`` of the time to run every prompt once (after one warm-up pass)."""
    for prompt in prompts:
        run(prompt)
    totals = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        for prompt in prompts:
            run(prompt)
        synchronize(device)
        totals.append(time.perf_counter() - started)
    return statistics.median(totals)


def engine_row(
    label: str, engine: SpeculativeEngine, prompts: list[list[int]], max_new: int, k: int, repeats: int
) -> dict[str, Any]:
    generation = GenerationConfig(max_new_tokens=max_new, stop_at_eos=False)
    speculation = SpeculationConfig(k=max(k, 1))  # K is unused without a drafter
    tokens = forwards = drafted = accepted = 0

    def run(prompt: list[int]) -> int:
        return engine.generate(prompt, generation, speculation).metrics.new_tokens

    seconds = timed_total(run, prompts, repeats, engine.device)
    for prompt in prompts:  # the counts (deterministic at greedy) from one more pass
        metrics = engine.generate(prompt, generation, speculation).metrics
        tokens, forwards = tokens + metrics.new_tokens, forwards + metrics.target_forwards
        drafted, accepted = drafted + metrics.drafted_tokens, accepted + metrics.accepted_tokens
    return {
        "engine": "specdec",
        "method": label,
        "k": k if engine.drafter is not None else None,
        "tokens_per_s": tokens / seconds,
        "tokens_per_forward": tokens / forwards,
        "acceptance": accepted / drafted if drafted else None,
        "drafted_per_token": drafted / tokens,
        "seconds": seconds,
    }


def hf_row(
    engine: HFEngine, prompts: list[list[int]], max_new: int, repeats: int, k: int | None = None
) -> dict[str, Any] | None:
    """transformers' generate in ``engine``'s mode on every prompt (K for lookup and assisted generation)."""
    generation = GenerationConfig(max_new_tokens=max_new, stop_at_eos=False)
    speculation = SpeculationConfig(k=k) if k is not None else None

    def run(prompt: list[int]) -> int:
        return engine.generate(prompt, generation, speculation).metrics.new_tokens

    try:
        seconds = timed_total(run, prompts, repeats, engine.device)
    except Exception as error:  # a configuration this transformers cannot run is reported, not fatal
        log(f"{engine.mode}: not run ({type(error).__name__}: {str(error).splitlines()[0][:160]})")
        return None
    runs = [engine.generate(prompt, generation, speculation).metrics for prompt in prompts]  # counts: one more pass
    tokens, forwards = sum(m.new_tokens for m in runs), sum(m.target_forwards for m in runs)
    unknown = any(m.drafted_tokens is None or m.accepted_tokens is None for m in runs)  # not exposed: null
    drafted = None if unknown else sum(m.drafted_tokens or 0 for m in runs)
    accepted = None if unknown else sum(m.accepted_tokens or 0 for m in runs)
    return {
        "engine": engine.mode,
        "method": engine.mode,
        "k": k,
        "tokens_per_s": tokens / seconds,
        "tokens_per_forward": tokens / forwards,
        "acceptance": accepted / drafted if drafted and accepted is not None else None,
        "drafted_per_token": drafted / tokens if drafted is not None else None,
        "seconds": seconds,
    }


def prompt_set_section(
    args: argparse.Namespace,
    target: LoadedModel,
    draft: LoadedModel | None,
    name: str,
    save: Callable[[dict], None],
) -> dict:
    """The rows of one prompt set; ``save`` receives the section after the engine's rows and again at the end (so
    an interrupted run keeps what it measured)."""
    texts = load_prompt_set(name)[: args.count]
    prompts = [list(target.tokenizer(text).input_ids) for text in texts]
    log(f"{name}: {len(prompts)} prompts, {args.max_new_tokens} new tokens each")
    rows: list[dict[str, Any] | None] = []
    ar = engine_row("autoregressive", SpeculativeEngine(target), prompts, args.max_new_tokens, 0, args.repeats)
    rows.append(ar)
    for method in args.methods:
        if method == "model" and draft is None:
            continue
        variants = [{"layers": layers} for layers in args.layers] if method == "layerskip" else [{}]
        for options in variants:
            spec = make_drafter("model", model=draft) if method == "model" else make_drafter(method, **options)
            engine = SpeculativeEngine(target, spec)
            assert engine.drafter is not None
            for k in args.ks:
                log(f"{name}: {engine.drafter.name} k={k}")
                rows.append(engine_row(engine.drafter.name, engine, prompts, args.max_new_tokens, k, args.repeats))
    save(_section(name, prompts, rows))
    if args.hf:
        log(f"{name}: transformers generate")
        rows.append(hf_row(HFEngine(target, HF_STATIC), prompts, args.max_new_tokens, args.repeats))
        for k in args.hf_ks:
            rows.append(hf_row(HFEngine(target, HF_LOOKUP), prompts, args.max_new_tokens, args.repeats, k))
        if draft is not None:
            assisted = HFEngine(target, HF_ASSISTED, draft=draft)
            for k in args.hf_ks:
                rows.append(hf_row(assisted, prompts, args.max_new_tokens, args.repeats, k))
    return _section(name, prompts, rows)


def _section(name: str, prompts: list[list[int]], rows: list[dict[str, Any] | None]) -> dict:
    kept = [r for r in rows if r is not None]
    for row in kept:
        row["speedup_vs_engine_ar"] = row["tokens_per_s"] / kept[0]["tokens_per_s"]  # kept[0]: the engine's AR run
    return {"prompt_set": name, "prompts": len(prompts), "rows": kept}


def render(section: dict) -> str:
    headers = ["engine", "method", "K", "tokens/s", "x engine AR", "tokens/forward", "acceptance"]
    rows = [
        [
            r["engine"],
            r["method"],
            r["k"],
            r["tokens_per_s"],
            r["speedup_vs_engine_ar"],
            r["tokens_per_forward"],
            r["acceptance"],
        ]
        for r in section["rows"]
    ]
    return f"{section['prompt_set']} ({section['prompts']} prompts)\n" + report.table(rows, headers, digits=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdec.benchmarks.drafters", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="zoo:tiny-code-target")
    parser.add_argument("--draft", default="zoo:tiny-code-draft", help="draft model for `model` ('' for none)")
    parser.add_argument("--prompts", default="zoo:code-repeat,zoo:code-heldout", help="comma-separated prompt sets")
    parser.add_argument("--count", type=int, default=8, help="prompts per set")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--ks", default="2,4,8")
    parser.add_argument("--hf-ks", default="4", help="K of transformers' prompt lookup and assisted rows")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--layers", default="", help="layer-skip draft layers, comma-separated (default: half)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (steady timings)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-hf", dest="hf", action="store_false", help="skip the transformers rows")
    parser.add_argument("--out", type=Path, default=Path("results/drafters"))
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    args.hf_ks = [int(k) for k in args.hf_ks.split(",") if k]
    args.methods = [m for m in args.methods.split(",") if m]
    args.layers = [int(n) for n in args.layers.split(",") if n] or [None]
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    target = load_model(args.target, device=args.device, dtype=args.dtype)
    draft = load_model(args.draft, device=target.device, dtype=target.dtype) if args.draft else None
    report_data: dict[str, Any] = {
        "command": "python -m specdec.benchmarks.drafters " + " ".join(argv if argv is not None else sys.argv[1:]),
        "target": args.target,
        "draft": args.draft or None,
        "device": str(target.device),
        "dtype": str(target.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sections": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    done: list[dict] = []

    def save(section: dict) -> None:
        report_data["sections"] = [*done, section]
        (args.out / "drafters_report.json").write_text(json.dumps(report_data, indent=2))

    for name in args.prompts.split(","):
        section = prompt_set_section(args, target, draft, name, save)
        save(section)
        done.append(section)
        print(render(section), flush=True)
        print(flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
