"""Where a speculative step's time goes on the GPU: host phases, GPU idle gaps and the busiest kernels.

    python scripts/diag/profile_steps.py --out results/profile [--runs eagle3-chain,ar-1b,ar-1b-sampled]

Runs: eagle3-chain{,3,4} (the 8B shape with a random EAGLE-3 head, synthetic length 4), ar-8b, ar-8b-sampled,
ar-1b, ar-1b-sampled (``--small-target``), zoo-sampled and zoo-sampled-ar (the zoo pair, float32 unless
``--zoo-dtype``, at temperature 0.8, top-p 0.95: speculative at K 4, and the target alone).

Each run is timed unprofiled (a warm-up, then the median of 3), then generates once under the torch profiler. The
engine's phases (drafting, the target forward, verification, the step's sync, the bookkeeping after it) are wrapped
in ``record_function`` labels here, so the summary says, per step: how long the host spent in each phase, how long
the GPU was busy and how long it sat idle while the host worked. Writes ``<run>.txt`` (the summary with the top CUDA
kernels and host ops) and, with ``--traces``, ``<run>.json.gz`` (the Chrome trace) under ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, load_model, make_drafter
from specdec.benchmarks.timing import time_engine
from specdec.config import AcceptanceConfig, Policy
from specdec.device import synchronize
from specdec.generation import Generation
from specdec.heads import write_random_eagle3
from specdec.verification import Verifier
from specdec.zoo.prompts import load_prompts

TARGET_8B = "zoo:synthetic/llama-3.1-8b@mix=0.5"
TARGET_1B = "zoo:synthetic/llama-3.2-1b@mix=0.5"
PHASES = {  # (owner, method) -> label
    (Generation, "step"): "step",
    (Generation, "_sync"): "sync",
    (Generation, "_advance"): "advance",
    (Generation, "_commit"): "commit",
    (Verifier, "verify"): "verify",
}


def label(owner: Any, name: str, tag: str) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with record_function(f"phase::{tag}"):
            return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def label_instance(engine: SpeculativeEngine) -> None:
    target = engine.target
    for name, tag in (("forward", "target_forward"), ("rollback", "rollback"), ("keep_path", "keep_path")):
        if hasattr(target, name):
            label(target, name, tag)
    drafter = engine.drafter
    if drafter is not None:
        for name, tag in (("propose", "propose"), ("observe", "observe"), ("read_features", "read_features")):
            if hasattr(drafter, name):
                label(drafter, name, tag)


def summarise(trace: dict[str, Any], steps: int) -> str:
    events = trace["traceEvents"]
    kernels = sorted(
        (e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e),
        key=lambda e: e["ts"],
    )
    phases = [e for e in events if e.get("cat") == "user_annotation" and e.get("name", "").startswith("phase::")]
    lines = []
    if kernels:
        busy, end, gaps = 0.0, kernels[0]["ts"], []
        for e in kernels:
            start, stop = e["ts"], e["ts"] + e["dur"]
            if start > end:
                gaps.append((start - end, end))
                busy += e["dur"]
            else:
                busy += max(0.0, stop - end)
            end = max(end, stop)
        span = end - kernels[0]["ts"]
        idle = sum(g for g, _ in gaps)
        lines.append(
            f"GPU span {span / 1e3:.2f} ms over {steps} steps: busy {busy / steps / 1e3:.3f} ms/step, "
            f"idle {idle / steps / 1e3:.3f} ms/step ({len(gaps)} gaps; over 20 us: "
            f"{sum(1 for g, _ in gaps if g > 20)}, {sum(g for g, _ in gaps if g > 20) / steps / 1e3:.3f} ms/step)"
        )
        # Which host phase was running during each idle gap over 20 us (the innermost phase covering the gap's end).
        by_phase: dict[str, float] = defaultdict(float)
        for gap, at in gaps:
            if gap <= 20:
                continue
            stop = at + gap
            covering = [p for p in phases if p["ts"] <= stop <= p["ts"] + p["dur"]]
            name = min(covering, key=lambda p: p["dur"])["name"] if covering else "(outside phases)"
            by_phase[name] += gap
        lines.append("GPU idle (gaps over 20 us) by the host phase that ended it, ms/step:")
        for name, total in sorted(by_phase.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:30s} {total / steps / 1e3:.3f}")
        per_kernel: dict[str, list[float]] = defaultdict(list)
        for e in kernels:
            per_kernel[e["name"][:90]].append(e["dur"])
        lines.append("top GPU kernels (total ms/step, calls/step, mean us):")
        for name, durs in sorted(per_kernel.items(), key=lambda kv: -sum(kv[1]))[:25]:
            lines.append(
                f"  {sum(durs) / steps / 1e3:7.3f} {len(durs) / steps:6.1f} {sum(durs) / len(durs):8.1f}  {name}"
            )
    host: dict[str, list[float]] = defaultdict(list)
    for p in phases:
        host[p["name"]].append(p["dur"])
    lines.append("host phases (ms/step, calls/step):")
    for name, durs in sorted(host.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"  {name:30s} {sum(durs) / steps / 1e3:7.3f} {len(durs) / steps:5.1f}")
    return "\n".join(lines)


def run_profile(
    name: str,
    engine: SpeculativeEngine,
    prompt: list[int],
    generation: GenerationConfig,
    speculation: SpeculationConfig | None,
    out: Path,
    traces: bool = False,
    sync_debug: bool = False,
) -> None:
    timed = time_engine(engine, prompt, generation, speculation, repeats=3)  # warm-up included, before the labels
    if sync_debug and engine.device.type == "cuda":  # every host sync of one generation, with where it came from
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                engine.generate(prompt, generation, speculation)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        sites: dict[str, int] = defaultdict(int)
        for w in caught:
            sites[f"{w.message}".splitlines()[0][:80] + " @ " + f"{w.filename}:{w.lineno}"] += 1
        lines = [f"{name}: synchronizing calls in one generation:"] + [f"  {n:5d} {site}" for site, n in sites.items()]
        print("\n".join(lines), flush=True)
        (out / f"{name}.syncs.txt").write_text("\n".join(lines) + "\n")
    label_instance(engine)
    synchronize(engine.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if engine.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        result = engine.generate(prompt, generation, speculation)
        synchronize(engine.device)
    steps = max(result.metrics.steps, 1)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
        if traces:
            with path.open("rb") as source, gzip.open(out / f"{name}.json.gz", "wb") as sink:
                shutil.copyfileobj(source, sink)
    m = result.metrics
    head = (
        f"{name}: {timed.tokens_per_second:.1f} tokens/s unprofiled (median of 3); "
        f"{m.new_tokens} tokens in {m.total_time_s * 1e3:.1f} ms under the profiler "
        f"({m.tokens_per_second:.1f} tokens/s), {steps} steps, {m.mean_tokens_per_forward:.2f} tokens/forward, "
        f"decoder {m.decoder_path}, verifier {m.verifier_backend}"
    )
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    text = head + "\n" + summarise(trace, steps) + "\nhost ops by self CPU time:\n" + table
    (out / f"{name}.txt").write_text(text + "\n")
    print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/profile"))
    parser.add_argument("--runs", default="eagle3-chain,ar-1b,ar-1b-sampled")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--traces", action="store_true", help="write each run's Chrome trace (gzip)")
    parser.add_argument("--sync-debug", action="store_true", help="list the host syncs of one generation")
    parser.add_argument("--small-target", default=TARGET_1B, help="the target of the ar-1b runs")
    parser.add_argument("--zoo-dtype", default="float32", help="the zoo pair's dtype (zoo-sampled runs)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for owner_method, tag in PHASES.items():
        label(*owner_method, tag)
    runs = args.runs.split(",")
    greedy = GenerationConfig(max_new_tokens=args.max_new_tokens, stop_at_eos=False)
    sampled = GenerationConfig(
        max_new_tokens=args.max_new_tokens, stop_at_eos=False, temperature=0.8, top_p=0.95, seed=0
    )
    prompt_gen = torch.Generator().manual_seed(0)
    if any(r.startswith("eagle3") or r.startswith("ar-8b") for r in runs):
        target = load_model(TARGET_8B, device="cuda", dtype="bfloat16")
        prompt = torch.randint(0, target.vocab_size, (128,), generator=prompt_gen).tolist()
        with tempfile.TemporaryDirectory() as scratch:
            heads = str(write_random_eagle3(target.model, Path(scratch) / "eagle3", 32000))
            synthetic = AcceptanceConfig(policy=Policy.SYNTHETIC, acceptance_length=4.0)
            for k in (3, 4, 5):
                run = f"eagle3-chain{k}" if k != 5 else "eagle3-chain"
                if run in runs:
                    chain = SpeculativeEngine(target, make_drafter("eagle", heads=heads, tree="chain", depth=k))
                    run_profile(
                        run,
                        chain,
                        prompt,
                        greedy,
                        SpeculationConfig(k=k, acceptance=synthetic),
                        args.out,
                        args.traces,
                        args.sync_debug,
                    )
            if "ar-8b-sampled" in runs:
                run_profile(
                    "ar-8b-sampled", SpeculativeEngine(target), prompt, sampled, None, args.out, args.traces,
                    args.sync_debug,
                )  # fmt: skip
            if "ar-8b" in runs:
                run_profile(
                    "ar-8b", SpeculativeEngine(target), prompt, greedy, None, args.out, args.traces, args.sync_debug
                )
        del target
        torch.cuda.empty_cache()
    if any(r.startswith("ar-1b") for r in runs):
        dtype = "bfloat16" if args.device == "cuda" else "float32"
        target = load_model(args.small_target, device=args.device, dtype=dtype)
        prompt = torch.randint(0, target.vocab_size, (128,), generator=prompt_gen).tolist()
        if "ar-1b" in runs:
            run_profile(
                "ar-1b", SpeculativeEngine(target), prompt, greedy, None, args.out, args.traces, args.sync_debug
            )
        if "ar-1b-sampled" in runs:
            run_profile(
                "ar-1b-sampled",
                SpeculativeEngine(target),
                prompt,
                sampled,
                None,
                args.out,
                args.traces,
                args.sync_debug,
            )
    if any(r.startswith("zoo-sampled") for r in runs):
        zoo_target = load_model("zoo:tiny-code-target", device=args.device, dtype=args.zoo_dtype)
        zoo_draft = load_model("zoo:tiny-code-draft", device=args.device, dtype=args.zoo_dtype)
        zoo_prompt = load_prompts()[0]
        for run, engine, speculation in (
            ("zoo-sampled", SpeculativeEngine(zoo_target, zoo_draft), SpeculationConfig(k=4)),
            ("zoo-sampled-ar", SpeculativeEngine(zoo_target), None),
        ):
            if run in runs:
                run_profile(run, engine, zoo_prompt, sampled, speculation, args.out, args.traces, args.sync_debug)


if __name__ == "__main__":
    main()
