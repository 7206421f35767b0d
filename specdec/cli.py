"""The ``specdec`` command line: ``specdec generate ...``, ``specdec serve ...`` and ``specdec zoo list``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from specdec import report
from specdec.config import (
    AcceptanceConfig,
    AdaptiveKConfig,
    GenerationConfig,
    Policy,
    SpeculationConfig,
)
from specdec.device import DEVICE_CHOICES, DTYPE_CHOICES
from specdec.errors import ConfigError, SpecdecError

if TYPE_CHECKING:
    from specdec.engine import SpeculativeEngine

DRAFT_METHODS = (
    "model",
    "ngram",
    "suffix",
    "layerskip",
    "medusa",
    "eagle",
)  # specdec.drafters.METHODS, named here for a fast --help

T = TypeVar("T")


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


def _model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that choose the models and where they run (generate and serve)."""
    parser.add_argument("--target", required=True, help="target model: zoo:NAME, a local folder, or a hub id")
    parser.add_argument(
        "--draft",
        help="draft model (same vocabulary), or with --draft-method medusa|eagle the heads (zoo name or folder); "
        "omit for autoregressive decoding",
    )
    parser.add_argument(
        "--draft-method",
        help=f"how to draft: {', '.join(DRAFT_METHODS)} (default: model with --draft; neither: autoregressive)",
    )
    parser.add_argument(
        "--draft-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the draft method (repeatable), e.g. max_ngram=4, layers=3",
    )
    parser.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (default auto)")
    parser.add_argument("--dtype", default="auto", help=f"one of {', '.join(DTYPE_CHOICES)} (default auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdec", description="Lossless speculative decoding for HF causal LMs.")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser(
        "generate",
        help="generate text with speculative decoding (or autoregressively without --draft)",
        description="Generate with TARGET, speculating with DRAFT. Models: zoo:NAME, a local folder, or a hub id.",
    )
    _model_flags(gen)
    gen.add_argument("--prompt", required=True, help="prompt text; - reads it from standard input")
    # Flags that only matter in some combinations default to None, so that one given where it does nothing is named.
    gen.add_argument("--k", type=_int, help="tokens drafted per step (default 4; start value if adaptive)")
    gen.add_argument("--adaptive-k", action="store_true", help="adapt K to the recent acceptance rate")
    gen.add_argument("--min-k", type=_int, help="adaptive K lower bound (default 1)")
    gen.add_argument("--max-k", type=_int, help="adaptive K upper bound (default 8)")
    gen.add_argument("--adaptive-window", type=_int, help="adaptive K window in steps (default 8)")
    gen.add_argument("--adaptive-step", type=_int, help="adaptive K change per adjustment (default 1)")
    gen.add_argument("--target-acceptance", type=_float, help="adaptive K target (default 0.7)")
    gen.add_argument("--temperature", type=_float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=_int, default=None, help="sample among the top N tokens")
    gen.add_argument("--top-p", type=_float, default=None, help="nucleus sampling mass")
    gen.add_argument("--seed", type=_int, default=0, help="seed for every random draw (default 0)")
    gen.add_argument("--max-new-tokens", type=_int, default=64, help="tokens to generate (default 64)")
    gen.add_argument(
        "--policy",
        help=f"acceptance policy: {', '.join(p.value for p in Policy)} (default lossless; lossy-* and synthetic "
        "change the output)",
    )
    gen.add_argument("--threshold", type=_float, help="lossy-threshold: probability floor (default 0.3)")
    gen.add_argument("--topk-agreement", type=_int, help="lossy-topk: accept within the target's top N (default 3)")
    gen.add_argument(
        "--acceptance-rate", type=_float, help="synthetic: mean acceptance rate (accepted / drafted), in (0, 1]"
    )
    gen.add_argument(
        "--acceptance-rates",
        metavar="P1,P2,...",
        help="synthetic: per draft position, the chance that the first i drafts are all accepted (one per position)",
    )
    gen.add_argument(
        "--acceptance-length",
        type=_float,
        help="synthetic: mean tokens per step, the bonus token included, in [1, K+1]",
    )
    gen.add_argument("--json", action="store_true", help="print one JSON object (text, token_ids, metrics)")
    gen.add_argument("--steps", action="store_true", help="with --json, include per-step metrics")
    gen.set_defaults(run=_generate)

    serve = commands.add_parser(
        "serve",
        help="serve the models over an OpenAI-compatible HTTP API (needs the serve extra)",
        description="Serve TARGET (speculating with DRAFT) at /v1/completions and /v1/chat/completions, with "
        "/v1/models, /health and Prometheus /metrics. Needs: pip install 'specdec[serve]'.",
    )
    _model_flags(serve)
    serve.add_argument("--k", type=_int, help="tokens drafted per step (default 4; start value if adaptive)")
    serve.add_argument("--adaptive-k", action="store_true", help="adapt K to the recent acceptance rate")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=_int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--max-concurrency", type=_int, default=16, help="requests admitted at once; more wait (default 16)"
    )
    serve.add_argument(
        "--max-tokens-limit", type=_int, default=1024, help="the largest max_tokens a request may ask (default 1024)"
    )
    serve.add_argument("--served-model-name", help="the model name clients use (default: the --target argument)")
    serve.add_argument(
        "--log-level", default="warning", help="uvicorn's log level: critical, error, warning, info, debug"
    )
    serve.set_defaults(run=_serve)

    zoo = commands.add_parser("zoo", help="the built-in models")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True)
    zoo_list = zoo_commands.add_parser("list", help="list the built-in models")
    zoo_list.set_defaults(run=_zoo_list)
    return parser


# Flags that do nothing in some combinations: (flag, argparse dest, when it applies, what is missing otherwise).
# Each is refused (exit 2) where it would do nothing, since the run would not be what its command line says. --seed is
# not among them: it seeds every random draw, and at temperature 0 a fixed seed is harmless.
SYNTHETIC_FLAGS = ("--acceptance-rate", "--acceptance-rates", "--acceptance-length")
SPECULATION_FLAGS = ("--k", "--adaptive-k", "--policy", "--threshold", "--topk-agreement", *SYNTHETIC_FLAGS)
ADAPTIVE_FLAGS = ("--min-k", "--max-k", "--adaptive-window", "--adaptive-step", "--target-acceptance")


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _given(args: argparse.Namespace, flag: str) -> bool:
    value = getattr(args, _dest(flag))
    return value is not False and value is not None and value != []


def _check_flags_apply(args: argparse.Namespace, policy: Policy) -> None:
    """Refuse, in one line, the first flag given where it does nothing."""
    reasons: list[tuple[str, str]] = []
    if args.draft is None and args.draft_method is None:
        alone = "without --draft or --draft-method nothing is drafted (autoregressive decoding)"
        reasons += [(f, alone) for f in (*SPECULATION_FLAGS, *ADAPTIVE_FLAGS, "--draft-option")]
    reasons += [(f, "it only applies with --adaptive-k") for f in ADAPTIVE_FLAGS if not args.adaptive_k]
    if policy is not Policy.LOSSY_THRESHOLD:
        reasons.append(("--threshold", f"it only applies with --policy {Policy.LOSSY_THRESHOLD.value}"))
    if policy is not Policy.LOSSY_TOPK:
        reasons.append(("--topk-agreement", f"it only applies with --policy {Policy.LOSSY_TOPK.value}"))
    if policy is not Policy.SYNTHETIC:
        reasons += [(f, f"it only applies with --policy {Policy.SYNTHETIC.value}") for f in SYNTHETIC_FLAGS]
    if args.temperature == 0.0:
        greedy = "temperature 0 is greedy decoding; give --temperature > 0 to sample"
        reasons += [("--top-k", greedy), ("--top-p", greedy)]
    if not args.json:
        reasons.append(("--steps", "it only applies with --json"))
    for flag, why in reasons:
        if _given(args, flag):
            raise ConfigError(f"{flag} does nothing here: {why}; remove it or add what it needs")


def _configs(args: argparse.Namespace) -> tuple[GenerationConfig, SpeculationConfig]:
    generation = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    defaults = AdaptiveKConfig()
    adaptive = None
    if args.adaptive_k:
        adaptive = AdaptiveKConfig(
            window=_or(args.adaptive_window, defaults.window),
            step=_or(args.adaptive_step, defaults.step),
            target_acceptance=_or(args.target_acceptance, defaults.target_acceptance),
            min_k=_or(args.min_k, defaults.min_k),
            max_k=_or(args.max_k, defaults.max_k),
        )
    acceptance_defaults = AcceptanceConfig()
    policy = Policy.parse(_or(args.policy, Policy.LOSSLESS.value))
    synthetic = _synthetic_parameter(args, policy)
    acceptance = _with_flag(
        synthetic,
        lambda: AcceptanceConfig(
            policy=policy,
            threshold=_or(args.threshold, acceptance_defaults.threshold),
            topk_agreement=_or(args.topk_agreement, acceptance_defaults.topk_agreement),
            **({synthetic[0]: synthetic[2]} if synthetic else {}),
        ),
    )
    k = args.k
    if k is None:  # the default K, within the adaptive bounds when those are given
        k = SpeculationConfig().k
        if adaptive is not None:
            k = min(max(k, adaptive.min_k), adaptive.max_k)
    speculation = _with_flag(synthetic, lambda: SpeculationConfig(k=k, adaptive=adaptive, acceptance=acceptance))
    _check_flags_apply(args, policy)
    return generation, speculation


def _synthetic_parameter(args: argparse.Namespace, policy: Policy) -> tuple[str, str, Any] | None:
    """(AcceptanceConfig field, flag, value) of the one synthetic flag given; refuses a synthetic flag without
    ``--policy synthetic``, ``--policy synthetic`` without one, and two of them, each in one line."""
    given = [flag for flag in SYNTHETIC_FLAGS if _given(args, flag)]
    if policy is not Policy.SYNTHETIC:
        if given and (args.draft is not None or args.draft_method is not None):
            why = f"it only applies with --policy {Policy.SYNTHETIC.value}"
            raise ConfigError(f"{given[0]} does nothing here: {why}; remove it or add what it needs")
        return None
    if len(given) != 1:
        choices = ", ".join(SYNTHETIC_FLAGS)
        if not given:
            raise ConfigError(f"--policy synthetic needs the acceptance to force: one of {choices}")
        raise ConfigError(f"{' and '.join(given)}: give only one of {choices}")
    flag = given[0]
    value: Any = getattr(args, _dest(flag))
    if flag == "--acceptance-rates":
        value = tuple(_rates(str(value)))
    return _dest(flag), flag, value


def _rates(text: str) -> list[float]:
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(part == "" for part in parts):
        raise ConfigError(
            f"--acceptance-rates {text!r} has an empty entry: give comma-separated numbers, one per draft position, "
            "e.g. 0.9,0.8,0.7,0.6"
        )
    try:
        return [float(part) for part in parts]
    except ValueError:
        raise ConfigError(
            f"--acceptance-rates {text!r}: expected comma-separated numbers, e.g. 0.9,0.8,0.7,0.6"
        ) from None


def _with_flag(synthetic: tuple[str, str, Any] | None, build: Callable[[], T]) -> T:
    """``build()``, its ConfigError prefixed with the synthetic flag and value it concerns (if one was given)."""
    try:
        return build()
    except ConfigError as error:
        if synthetic is None or synthetic[0] not in str(error):
            raise
        flag, value = synthetic[1], synthetic[2]
        shown = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"
        raise ConfigError(f"{flag} {shown}: {error}") from None


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


HEAD_METHODS = ("medusa", "eagle")  # drafting methods whose --draft names trained heads, not a draft model


def _draft_method(args: argparse.Namespace) -> str | None:
    """The drafting method the flags ask for (None: autoregressive), checked against --draft."""
    method = args.draft_method or ("model" if args.draft else None)
    if method is None:
        return None
    if method not in DRAFT_METHODS:
        raise ConfigError(f"unknown --draft-method {method!r}: expected one of {', '.join(DRAFT_METHODS)}")
    if method == "model" and not args.draft:
        raise ConfigError("--draft-method model needs --draft NAME (the draft model)")
    if method != "model" and method not in HEAD_METHODS and args.draft:
        raise ConfigError(f"--draft-method {method} drafts without a model: remove --draft {args.draft}")
    return method


def _read_prompt(args: argparse.Namespace) -> str:
    """The prompt, verbatim: ``--prompt -`` reads all of standard input. Any non-empty text is a prompt (whitespace
    too: indentation is a legitimate code prompt)."""
    if args.prompt == "-":
        prompt = sys.stdin.read()
        if prompt == "":
            raise SpecdecError("--prompt - read nothing from standard input: pipe the prompt in, or pass it as text")
        return prompt
    if args.prompt == "":
        raise SpecdecError("--prompt is empty: give the text to continue (or - to read it from standard input)")
    return str(args.prompt)


def _engine(args: argparse.Namespace) -> SpeculativeEngine:
    """The engine the model flags ask for (--target, --draft, --draft-method, --draft-option, --device, --dtype);
    draft options are checked before any model loads."""
    method = _draft_method(args)
    from specdec.drafters import make_drafter, parse_options

    options = parse_options(method, args.draft_option) if method is not None else {}
    if method in HEAD_METHODS and args.draft:  # --draft names the heads' weights (a zoo name or a folder)
        if "heads" in options:
            raise ConfigError(
                f"--draft {args.draft} and --draft-option heads=... both name the {method} heads: give one"
            )
        options["heads"] = args.draft
    if method is not None and method != "model":
        make_drafter(method, **options)  # refuse bad options before loading anything
    from specdec.engine import SpeculativeEngine
    from specdec.loading import load_model

    target = load_model(args.target, device=args.device, dtype=args.dtype)
    draft = None
    if method == "model":
        model = load_model(args.draft, device=target.device, dtype=target.dtype)
        draft = make_drafter("model", model=model, **options)
    elif method is not None:
        draft = make_drafter(method, **options)
    return SpeculativeEngine(target, draft)


def _generate(args: argparse.Namespace) -> int:
    generation, speculation = _configs(args)  # validate flags before reading any input or loading any model
    _draft_method(args)
    prompt = _read_prompt(args)
    engine = _engine(args)
    result = engine.generate(prompt, generation, speculation)
    if args.json:
        print(report.to_json(result.to_dict(with_steps=args.steps)))
    else:
        print(result.text)
        print()
        print(report.metrics_table(result.metrics))
    if result.metrics.synthetic is not None:  # on standard error too, so that no reader of the output misses it
        print(f"specdec: note: {report.synthetic_note(result.metrics.synthetic)}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from specdec.serving import ServeConfig, create_app
    except ImportError as error:
        raise SpecdecError(
            f"specdec serve needs the serve extra ({error.name} is not installed): pip install 'specdec[serve]'"
        ) from None
    speculation = _speculation(args)
    config = ServeConfig(
        model_name=args.served_model_name or args.target,
        max_concurrency=args.max_concurrency,
        max_tokens_limit=args.max_tokens_limit,
    )
    engine = _engine(args)
    app = create_app(engine, speculation, config)
    print(
        f"specdec: serving {config.model_name} ({engine.target.path}, {engine.device}) on "
        f"http://{args.host}:{args.port}/v1",
        file=sys.stderr,
        flush=True,
    )
    # SIGINT / SIGTERM: uvicorn stops accepting, lets in-flight requests finish for a few seconds, then stops
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def _speculation(args: argparse.Namespace) -> SpeculationConfig:
    """The server's K: fixed (--k) or adaptive (--adaptive-k), for every request."""
    adaptive = AdaptiveKConfig() if args.adaptive_k else None
    k = args.k if args.k is not None else SpeculationConfig().k
    return SpeculationConfig(k=k, adaptive=adaptive)


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
