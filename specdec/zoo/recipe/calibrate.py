"""Calibration of the synthetic pairs: ``python -m specdec.zoo.recipe.calibrate --device cuda --out calibration.json``.

For each (target, draft) pair of shapes and each ``mix``, builds both models from their zoo names, measures greedy
agreement and simulated acceptance at K (``agreement.py``) on the target's greedy continuations of the held-out code
prompts (encoded with the zoo tokenizer), and the cost of one decode forward of each model (eager transformers,
batch 1, KV cache). Prints a markdown table and writes every figure to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import torch

from specdec.zoo.prompts import load_prompts
from specdec.zoo.recipe.agreement import measure_acceptance
from specdec.zoo.recipe.cost import decode_ms
from specdec.zoo.registry import resolve_zoo
from specdec.zoo.synthetic import build_synthetic

REAL_PAIRS = (
    ("llama-3.1-8b", "llama-3-draft-116m"),
    ("llama-3.2-3b", "llama-3.2-1b"),
    ("llama-3.2-1b", "llama-3-draft-116m"),
    ("gpt2", "distilgpt2"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdec.zoo.recipe.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--pairs", nargs="*", default=[f"{t}:{d}" for t, d in REAL_PAIRS], help="TARGET:DRAFT shapes")
    parser.add_argument("--mixes", default="0.2,0.3,0.4,0.5,0.6,0.7")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    command = " ".join(["python -m specdec.zoo.recipe.calibrate", *(sys.argv[1:] if argv is None else argv)])
    rows: list[dict] = []
    for pair in args.pairs:
        target_shape, draft_shape = pair.split(":")
        for mix in (float(m) for m in args.mixes.split(",")):
            rows.append(
                calibrate_pair(target_shape, draft_shape, mix, device, dtype, args.prompts, args.new_tokens, args.k)
            )
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({"command": command, "rows": rows}, f, indent=1)
    print(render_table(rows))
    return 0


def calibrate_pair(
    target_shape: str,
    draft_shape: str,
    mix: float,
    device: torch.device,
    dtype: torch.dtype,
    n_prompts: int,
    new_tokens: int,
    k: int,
) -> dict:
    started = time.perf_counter()
    target_entry = resolve_zoo(f"zoo:synthetic/{target_shape}@mix={mix}")
    draft_entry = resolve_zoo(f"zoo:synthetic/{draft_shape}@mix={mix}")
    target, tokenizer = build_synthetic(target_entry, device, dtype)
    draft, _ = build_synthetic(draft_entry, device, dtype)
    built = time.perf_counter() - started
    prompts = [tokenizer(text, return_tensors="pt").input_ids.to(device) for text in load_prompts()[:n_prompts]]
    acceptance = measure_acceptance(target, draft, prompts, new_tokens, k)
    target_ms, draft_ms = decode_ms(target, device), decode_ms(draft, device)
    row = {
        "target": target_entry.name,
        "draft": draft_entry.name,
        "mix": mix,
        "agreement": round(acceptance.agreement, 3),
        f"acceptance_rate_k{k}": round(acceptance.acceptance_rate, 3),
        f"tokens_per_target_forward_k{k}": round(acceptance.tokens_per_target_forward, 2),
        "positions": acceptance.positions,
        "target_decode_ms": round(target_ms, 3),
        "draft_decode_ms": round(draft_ms, 3),
        "draft_cost_fraction": round(draft_ms / target_ms, 3),
        "build_seconds": round(built, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
    }
    del target, draft
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def render_table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k.startswith(("acceptance_rate_", "tokens_per_target_forward_"))] if rows else []
    lines = [
        "| target | draft | mix | agreement | " + " | ".join(keys) + " | draft cost / target |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in keys) + " | --- |",
    ]
    for row in rows:
        values = " | ".join(str(row[k]) for k in keys)
        lines.append(
            f"| {row['target'].split('@')[0]} | {row['draft'].split('@')[0]} | {row['mix']} | {row['agreement']} | "
            f"{values} | {row['draft_cost_fraction']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
