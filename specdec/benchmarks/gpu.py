"""The GPU speed report: bandwidth floor, the engine against Hugging Face, and speculative speedups.

    python -m specdec.benchmarks.gpu --out results/gpu [--ar-models ...] [--pairs ...] [--ks 2,4,6]

Prints a table per section and writes ``gpu_report.json`` under ``--out``. Batch 1, bfloat16, a 128-token prompt
and 256 new tokens unless told otherwise. Synthetic models come from the zoo (random weights of real shapes).

transformers is measured as a careful user runs it (``specdec.hf_engine``): ``generate`` with a static cache
(``hf_static``), the static cache with transformers' torch.compile of the decode step (``hf_compile``; null with
``hf_compile_unavailable`` giving the reason where it cannot compile), and for pairs assisted generation with the same
draft at ``--hf-k`` (``hf_assisted``). ``hf_best`` names the fastest of them, and the engine is quoted against it
(``engine_over_hf_best``, ``spec_over_hf_best``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from specdec import report
from specdec.benchmarks.timing import copy_bandwidth, time_engine, time_hf, weight_bytes
from specdec.config import GenerationConfig, SpeculationConfig
from specdec.engine import SpeculativeEngine
from specdec.hf_engine import HF_ASSISTED, HF_COMPILE, HF_STATIC, HFEngine, HFUnavailableError
from specdec.loading import LoadedModel, load_model


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prompt_ids(model: LoadedModel, length: int, source: str = "code", seed: int = 0) -> list[int]:
    """A ``length``-token prompt: the zoo's held-out code prompts, encoded and joined (``code``; the text the
    synthetic pairs' agreement was calibrated on, docs/zoo.md), or uniform random ids (``random``)."""
    if source == "code" and model.tokenizer is not None:
        from specdec.zoo.prompts import load_prompts

        ids: list[int] = []
        for text in load_prompts():
            ids += model.tokenizer(text).input_ids
            if len(ids) >= length:
                return ids[:length]
        raise ValueError(f"the held-out prompts hold {len(ids)} tokens, fewer than --prompt-length {length}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(10, model.vocab_size, (length,), generator=generator).tolist()


def analytic_speedup(tokens_per_step: float, draft_step_s: float, verify_s: float, ar_token_s: float) -> float:
    """The speedup a step's measured cost and yield predict: ``tokens_per_step`` tokens for one draft phase plus one
    verification, against ``ar_token_s`` per autoregressive token. What the run falls short of it is overhead
    outside those two phases (host work between steps, the prefill)."""
    return tokens_per_step * ar_token_s / (draft_step_s + verify_s)


def iid_tokens_per_step(acceptance: float, k: int) -> float:
    """Tokens per step if each drafted token were accepted independently with probability ``acceptance``:
    ``(1 - a^(K+1)) / (1 - a)`` (Leviathan et al.). Real acceptance comes in runs, so real steps usually yield more."""
    return k + 1.0 if acceptance >= 1.0 else (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def autoregressive_section(
    name: str, max_new: int, prompt_length: int, prompt_source: str, floor_bw: float, hf: bool
) -> dict[str, Any]:
    log(f"autoregressive: loading {name}")
    target = load_model(name, device="cuda", dtype="bfloat16")
    prompt = prompt_ids(target, prompt_length, prompt_source)
    generation = GenerationConfig(max_new_tokens=max_new, stop_at_eos=False)
    bytes_read = weight_bytes(target.model)
    floor = floor_bw / bytes_read  # tokens/s if a forward only read the weights once at the measured bandwidth
    engine = SpeculativeEngine(target)
    timed = time_engine(engine, prompt, generation)
    assert timed.result is not None
    row: dict[str, Any] = {
        "model": name,
        "weights_gb": bytes_read / 1e9,
        "floor_tokens_per_s": floor,
        "engine_tokens_per_s": timed.tokens_per_second,
        "engine_fraction_of_floor": timed.tokens_per_second / floor,
        "decoder_path": timed.result.metrics.decoder_path,
    }
    log(f"  engine {timed.tokens_per_second:.1f} tok/s ({row['engine_fraction_of_floor']:.0%} of floor {floor:.0f})")
    sampling = GenerationConfig(max_new_tokens=max_new, stop_at_eos=False, temperature=0.8, top_p=0.95)
    sampled = time_engine(engine, prompt, sampling)
    row["engine_sampled_tokens_per_s"] = sampled.tokens_per_second  # temperature 0.8, top-p 0.95
    row["sampled_over_greedy"] = sampled.tokens_per_second / timed.tokens_per_second
    log(
        f"  sampled (t 0.8, top-p 0.95) {sampled.tokens_per_second:.1f} tok/s "
        f"({row['sampled_over_greedy']:.2f}x greedy)"
    )
    if hf:
        row |= hf_figures(target, prompt, generation)
        if row["hf_best_tokens_per_s"]:
            row["engine_over_hf_best"] = timed.tokens_per_second / row["hf_best_tokens_per_s"]
            log(f"  engine / strongest HF ({row['hf_best']}) = {row['engine_over_hf_best']:.2f}x")
    del engine, target
    torch.cuda.empty_cache()
    return row


def hf_figures(
    target: LoadedModel,
    prompt: list[int],
    generation: GenerationConfig,
    draft: LoadedModel | None = None,
    k: int | None = None,
) -> dict[str, Any]:
    """transformers on the same prompt: ``hf_static_tokens_per_s``, ``hf_compile_tokens_per_s`` and, with a draft,
    ``hf_assisted_tokens_per_s`` at ``k`` (with its acceptance and tokens per forward); a mode that cannot run here
    is null, and ``hf_static_unavailable`` / ``hf_compile_unavailable`` / ``hf_assisted_unavailable`` says why.
    ``hf_best``: the fastest mode, quoted as the comparison."""
    row: dict[str, Any] = {}
    # (mode, assistant, untimed runs first: hf-compile compiles in its first call and records CUDA graphs in the next)
    modes: list[tuple[str, LoadedModel | None, int]] = [(HF_STATIC, None, 1), (HF_COMPILE, None, 2)]
    if draft is not None and k is not None:
        modes.append((HF_ASSISTED, draft, 1))
    speeds: dict[str, float] = {}
    for mode, assistant, warmups in modes:
        key = mode.replace("-", "_")  # hf_static, hf_compile, hf_assisted
        speculation = SpeculationConfig(k=k) if mode == HF_ASSISTED and k is not None else None
        try:
            timed = time_hf(HFEngine(target, mode, draft=assistant), prompt, generation, speculation, warmups, 1)
        except Exception as error:  # HFUnavailableError, or a mode this model cannot run: reported, not fatal
            reason = str(error) if isinstance(error, HFUnavailableError) else f"{type(error).__name__}: {error}"
            row[f"{key}_tokens_per_s"], row[f"{key}_unavailable"] = None, reason.splitlines()[0][:400]
            log(f"  {mode}: not run ({row[f'{key}_unavailable']})")
            torch.cuda.empty_cache()
            continue
        assert timed.hf is not None
        speeds[mode] = row[f"{key}_tokens_per_s"] = timed.tokens_per_second
        if mode == HF_ASSISTED:
            row["hf_assisted_k"] = k
            row["hf_assisted_acceptance"] = timed.hf.metrics.acceptance_rate
            row["hf_assisted_tokens_per_forward"] = timed.hf.metrics.mean_tokens_per_forward
        log(f"  {mode} {timed.tokens_per_second:.1f} tok/s")
    best = max(speeds, key=speeds.__getitem__) if speeds else None
    row["hf_best"], row["hf_best_tokens_per_s"] = best, speeds.get(best) if best else None
    return row


def speculative_rows(
    target: LoadedModel,
    draft: LoadedModel,
    ks: list[int],
    temperatures: list[float],
    max_new: int,
    prompt: list[int],
    hf_k: int | None,
) -> list[dict[str, Any]]:
    """Every K at every temperature, each against the engine's own autoregressive run at that temperature. Greedy
    rows are also quoted against the strongest of transformers' static cache, compiled static cache and assisted
    generation at ``hf_k`` (:func:`hf_figures`, measured once per pair); sampled rows (speculative sampling) have no
    HF counterpart here, since HF's assisted sampling is a different algorithm."""
    spec_engine = SpeculativeEngine(target, draft)
    rows = []
    hf: dict[str, Any] = {}
    if hf_k is not None and 0.0 in temperatures:
        log(f"  transformers on {target.name} (+ {draft.name} assisted at K={hf_k})")
        greedy = GenerationConfig(max_new_tokens=max_new, stop_at_eos=False)
        hf = hf_figures(target, prompt, greedy, draft, hf_k)
    for temperature in temperatures:
        generation = GenerationConfig(max_new_tokens=max_new, temperature=temperature, stop_at_eos=False)
        ar = time_engine(SpeculativeEngine(target), prompt, generation)
        ar_token_s = 1.0 / ar.tokens_per_second
        for k in ks:
            row = speculative_row(spec_engine, prompt, generation, k, ar_token_s)
            if hf and generation.greedy:
                row |= hf
                if hf.get("hf_best_tokens_per_s"):
                    row["spec_over_hf_best"] = row["spec_tokens_per_s"] / hf["hf_best_tokens_per_s"]
                if k == hf_k and hf.get("hf_assisted_tokens_per_s"):
                    row["spec_over_hf_assisted"] = row["spec_tokens_per_s"] / hf["hf_assisted_tokens_per_s"]
            log(
                f"  T={temperature:g} K={k} acceptance {row['acceptance']:.2f} spec {row['spec_tokens_per_s']:.1f} "
                f"tok/s speedup {row['speedup']:.2f}x (analytic {row['analytic_speedup']:.2f}x), "
                f"draft {row['draft_cost_fraction']:.1%} of the target per token"
                + (
                    f", {row['spec_over_hf_best']:.2f}x HF's strongest ({row['hf_best']})"
                    if "spec_over_hf_best" in row
                    else ""
                )
            )
            rows.append({"target": target.name, "draft": draft.name} | row)
    return rows


def speculative_row(
    engine: SpeculativeEngine, prompt: list[int], generation: GenerationConfig, k: int, ar_token_s: float
) -> dict[str, Any]:
    timed = time_engine(engine, prompt, generation, SpeculationConfig(k=k))
    assert timed.result is not None
    steps, metrics = timed.result.steps, timed.result.metrics
    draft_step_s = sum(s.draft_ms for s in steps) / len(steps) / 1000.0
    verify_s = sum(s.verify_ms for s in steps) / len(steps) / 1000.0
    acceptance = metrics.acceptance_rate or 0.0
    tokens_per_step = sum(s.emitted for s in steps) / len(steps)
    predicted = analytic_speedup(tokens_per_step, draft_step_s, verify_s, ar_token_s)
    speedup = timed.tokens_per_second * ar_token_s
    return {
        "temperature": generation.temperature,
        "k": k,
        "acceptance": acceptance,
        "tokens_per_step": tokens_per_step,
        "ar_tokens_per_s": 1.0 / ar_token_s,
        "spec_tokens_per_s": timed.tokens_per_second,
        "speedup": speedup,
        "draft_ms_per_step": draft_step_s * 1000,
        "verify_ms": verify_s * 1000,
        "ar_ms_per_token": ar_token_s * 1000,
        # one draft forward (the step's K forwards, one CUDA graph) against one target forward (an AR token)
        "draft_cost_fraction": draft_step_s / k / ar_token_s,
        "analytic_speedup": predicted,
        "fraction_of_analytic": speedup / predicted,
        "iid_analytic_speedup": analytic_speedup(
            iid_tokens_per_step(acceptance, k), draft_step_s, verify_s, ar_token_s
        ),
    }


def draft_chain_ablation(
    target: LoadedModel, draft: LoadedModel, prompt: list[int], max_new: int, k: int
) -> dict[str, Any] | None:
    """Greedy speculative tokens/s with the draft's K forwards captured as one CUDA graph, and with one graph per
    draft forward, in the same run on the same pair (None where the draft has no fast path)."""
    from specdec.fast.decoder import FastDecoder

    engine = SpeculativeEngine(target, draft)
    decoder = getattr(engine.drafter, "decoder", None)
    if not isinstance(decoder, FastDecoder) or not decoder.use_graphs:
        return None
    generation = GenerationConfig(max_new_tokens=max_new, stop_at_eos=False)
    speeds = {}
    for chain in (True, False):
        decoder.chain_graph = chain
        timed = time_engine(engine, prompt, generation, SpeculationConfig(k=k))
        assert timed.result is not None
        steps = timed.result.steps
        speeds[chain] = (timed.tokens_per_second, sum(s.draft_ms for s in steps) / len(steps))
    decoder.chain_graph = True
    row = {
        "target": target.name,
        "draft": draft.name,
        "k": k,
        "chain_graph_tokens_per_s": speeds[True][0],
        "per_forward_graphs_tokens_per_s": speeds[False][0],
        "speedup": speeds[True][0] / speeds[False][0],
        "chain_graph_draft_ms_per_step": speeds[True][1],
        "per_forward_graphs_draft_ms_per_step": speeds[False][1],
    }
    log(
        f"  draft chain graph: {speeds[True][0]:.1f} tok/s (draft {speeds[True][1]:.2f} ms/step) vs one graph per "
        f"forward {speeds[False][0]:.1f} tok/s ({speeds[False][1]:.2f} ms/step): {row['speedup']:.3f}x"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/gpu"))
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--prompt", choices=("code", "random"), default="code", help="held-out code or random ids")
    parser.add_argument(
        "--ar-models", default="zoo:synthetic/llama-3.2-1b,zoo:synthetic/llama-3.1-8b,zoo:synthetic/gpt2"
    )
    parser.add_argument(
        "--pairs",
        default=",".join(
            f"zoo:synthetic/{target}@mix={mix}+zoo:synthetic/llama-3-draft-116m@mix={mix}"
            for target, mixes in (("llama-3.1-8b", (0.2, 0.45, 0.5)), ("llama-3.2-1b", (0.3,)))
            for mix in mixes
        )
        + ",zoo:synthetic/gpt2@mix=0.3+zoo:synthetic/distilgpt2@mix=0.3",
        help="TARGET+DRAFT pairs, comma-separated, speculated at every --ks (HF: static, compiled, assisted at --hf-k)",
    )
    parser.add_argument("--ks", default="2,4,6")
    parser.add_argument(
        "--temperatures",
        default="0,1",
        help="0 is greedy verification; above 0, speculative sampling (synthetic pairs settle into agreeing loops "
        "under greedy decoding over long outputs, docs/performance.md; sampling keeps acceptance partial)",
    )
    parser.add_argument("--hf-k", type=int, default=4)
    parser.add_argument("--no-hf", action="store_true", help="leave out transformers (static, compile, assisted)")
    parser.add_argument(
        "--ablate-draft-chain",
        action="store_true",
        help="on the first pair at --hf-k: the draft chain as one CUDA graph vs one graph per draft forward",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu benchmark: no CUDA GPU here", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "settings": vars(args) | {"out": str(args.out)},
    }
    bandwidth = copy_bandwidth(device)
    out["copy_bandwidth_tb_per_s"] = bandwidth / 1e12
    log(f"device-to-device copy: {bandwidth / 1e12:.2f} TB/s (read + write)")

    path = args.out / "gpu_report.json"

    def save() -> None:  # after every model and pair: an interrupted run keeps what it measured
        path.write_text(json.dumps(out, indent=2))

    out["autoregressive"] = []
    for name in filter(None, args.ar_models.split(",")):
        row = autoregressive_section(
            name,
            args.max_new_tokens,
            args.prompt_length,
            args.prompt,
            bandwidth,
            not args.no_hf,
        )
        out["autoregressive"].append(row)
        save()
    if out["autoregressive"]:
        keys = list(dict.fromkeys(key for row in out["autoregressive"] for key in row))
        print(report.table([[r.get(k) for k in keys] for r in out["autoregressive"]], keys))

    out["speculative"] = []
    ks = [int(k) for k in args.ks.split(",")]
    temperatures = [float(t) for t in args.temperatures.split(",")]
    for pair in filter(None, args.pairs.split(",")):
        target_name, draft_name = pair.split("+")
        log(f"speculative: {target_name} + {draft_name}")
        target = load_model(target_name, device="cuda", dtype="bfloat16")
        draft = load_model(draft_name, device="cuda", dtype="bfloat16")
        prompt = prompt_ids(target, args.prompt_length, args.prompt)
        hf_k = None if args.no_hf else args.hf_k
        out["speculative"] += speculative_rows(target, draft, ks, temperatures, args.max_new_tokens, prompt, hf_k)
        if args.ablate_draft_chain and "ablation" not in out:  # the first pair only
            out["ablation"] = draft_chain_ablation(target, draft, prompt, args.max_new_tokens, args.hf_k)
        save()
        del target, draft
        torch.cuda.empty_cache()
    if out["speculative"]:
        keys = ["target", "draft", "temperature", "k", "acceptance", "draft_cost_fraction", "spec_tokens_per_s",
                "speedup", "analytic_speedup", "fraction_of_analytic", "hf_best", "spec_over_hf_best",
                "spec_over_hf_assisted"]  # fmt: skip
        print(report.table([[r.get(k) for k in keys] for r in out["speculative"]], keys))
    save()
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
