"""The ``specdec`` command line: ``specdec generate ...`` and ``specdec zoo list``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from specdec import report
from specdec.config import (
    AcceptanceConfig,
    AdaptiveKConfig,
    GenerationConfig,
    Policy,
    SpeculationConfig,
)
from specdec.device import DEVICE_CHOICES, DTYPE_CHOICES
from specdec.errors import SpecdecError


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdec", description="Lossless speculative decoding for HF causal LMs.")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser(
        "generate",
        help="generate text with speculative decoding (or autoregressively without --draft)",
        description="Generate with TARGET, speculating with DRAFT. Models: zoo:NAME, a local folder, or a hub id.",
    )
    gen.add_argument("--target", required=True, help="target model: zoo:NAME, a local folder, or a hub id")
    gen.add_argument("--draft", help="draft model (same vocabulary); omit for autoregressive decoding")
    gen.add_argument("--prompt", required=True, help="prompt text")
    gen.add_argument("--k", type=_int, default=4, help="tokens drafted per step (default 4; start value if adaptive)")
    gen.add_argument("--adaptive-k", action="store_true", help="adapt K to the recent acceptance rate")
    gen.add_argument("--min-k", type=_int, default=1, help="adaptive K lower bound (default 1)")
    gen.add_argument("--max-k", type=_int, default=8, help="adaptive K upper bound (default 8)")
    gen.add_argument("--adaptive-window", type=_int, default=8, help="adaptive K window in steps (default 8)")
    gen.add_argument("--adaptive-step", type=_int, default=1, help="adaptive K change per adjustment (default 1)")
    gen.add_argument("--target-acceptance", type=_float, default=0.7, help="adaptive K target (default 0.7)")
    gen.add_argument("--temperature", type=_float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=_int, default=None, help="sample among the top N tokens")
    gen.add_argument("--top-p", type=_float, default=None, help="nucleus sampling mass")
    gen.add_argument("--seed", type=_int, default=0, help="seed for every random draw (default 0)")
    gen.add_argument("--max-new-tokens", type=_int, default=64, help="tokens to generate (default 64)")
    gen.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (default auto)")
    gen.add_argument("--dtype", default="auto", help=f"one of {', '.join(DTYPE_CHOICES)} (default auto)")
    gen.add_argument(
        "--policy",
        default=Policy.LOSSLESS.value,
        help=f"acceptance policy: {', '.join(p.value for p in Policy)} (default lossless; lossy-* change the output)",
    )
    gen.add_argument("--threshold", type=_float, default=0.3, help="lossy-threshold: probability floor")
    gen.add_argument("--topk-agreement", type=_int, default=3, help="lossy-topk: accept within the target's top N")
    gen.add_argument("--json", action="store_true", help="print one JSON object (text, token_ids, metrics)")
    gen.add_argument("--steps", action="store_true", help="with --json, include per-step metrics")
    gen.set_defaults(run=_generate)

    zoo = commands.add_parser("zoo", help="the built-in models")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True)
    zoo_list = zoo_commands.add_parser("list", help="list the built-in models")
    zoo_list.set_defaults(run=_zoo_list)
    return parser


def _configs(args: argparse.Namespace) -> tuple[GenerationConfig, SpeculationConfig]:
    generation = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    adaptive = None
    if args.adaptive_k:
        adaptive = AdaptiveKConfig(
            window=args.adaptive_window,
            step=args.adaptive_step,
            target_acceptance=args.target_acceptance,
            min_k=args.min_k,
            max_k=args.max_k,
        )
    acceptance = AcceptanceConfig(
        policy=Policy.parse(args.policy), threshold=args.threshold, topk_agreement=args.topk_agreement
    )
    k = min(max(args.k, args.min_k), args.max_k) if adaptive is not None and args.k >= 1 else args.k
    return generation, SpeculationConfig(k=k, adaptive=adaptive, acceptance=acceptance)


def _generate(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise SpecdecError("--prompt is empty: give the text to continue")
    generation, speculation = _configs(args)  # validate flags before loading any model
    from specdec.engine import SpeculativeEngine
    from specdec.loading import load_model

    target = load_model(args.target, device=args.device, dtype=args.dtype)
    draft = load_model(args.draft, device=target.device, dtype=target.dtype) if args.draft else None
    engine = SpeculativeEngine(target, draft)
    result = engine.generate(args.prompt, generation, speculation)
    if args.json:
        print(report.to_json(result.to_dict(with_steps=args.steps)))
    else:
        print(result.text)
        print()
        print(report.metrics_table(result.metrics))
    return 0


def _zoo_list(args: argparse.Namespace) -> int:
    from specdec import zoo

    rows = [(f"{zoo.ZOO_PREFIX}{e.name}", e.kind, e.description) for e in zoo.list_zoo()]
    print(report.table(rows, ["name", "kind", "description"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except SpecdecError as error:
        print(f"specdec: error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        print("specdec: error: out of memory; try a smaller model, batch or --max-new-tokens", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("specdec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
