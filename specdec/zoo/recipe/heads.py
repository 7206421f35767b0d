"""The recipe of the zoo's draft heads: ``python -m specdec.zoo.recipe.heads --device cpu|cuda --out DIR``.

Self-distillation for ``zoo:tiny-code-target`` (see ``head_training.py`` for the losses):

1. continuations of random training-split prefixes by the target itself (greedy, and sampled at ``temperature``),
   and plain training-split windows; held-out files only ever provide the evaluation rows;
2. the target's teacher-forced features and top-1 choices on those rows;
3. Medusa heads (``medusa_heads`` heads, one residual block each, sharing the target's output layer);
4. an EAGLE-1/2 head (one decoder layer at the target's width, the target's embedding and output layer shared),
   trained unrolled over ``eagle_train_depth`` drafting steps;
5. held-out teacher-forced agreement per head / depth; ``DIR/medusa`` and ``DIR/eagle`` get float16
   ``model.safetensors``, ``config.json``, ``training.json`` and ``MODEL_CARD.md``.

The default ``--out`` is the zoo's ``models/tiny-code`` (what ``zoo:tiny-code-medusa`` / ``zoo:tiny-code-eagle`` load).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from specdec.heads.eagle import EagleConfig, EagleHead
from specdec.heads.layer import LayerShape
from specdec.heads.medusa import MedusaConfig, MedusaHeads
from specdec.heads.target import TargetParts
from specdec.zoo.recipe.corpus import collect_corpus
from specdec.zoo.recipe.head_training import (
    HeadData,
    HeadLoop,
    collect,
    continuation_rows,
    eagle_agreement,
    eagle_loss,
    medusa_agreement,
    medusa_loss,
    raw_text_agreement,
    train_loop,
)
from specdec.zoo.recipe.train import _encode, environment
from specdec.zoo.recipe.trainer import sample_windows
from specdec.zoo.registry import TRAINED_DIR
from specdec.zoo.tokenizer import end_of_text_id, load_zoo_tokenizer


@dataclass(frozen=True)
class HeadRecipe:
    greedy_rows: int = 512
    sampled_rows: int = 256
    text_rows: int = 2048  # training-split windows as they are (teacher-forced only: no generation cost)
    temperature: float = 0.8
    prompt_len: int = 16
    length: int = 128
    eval_rows: int = 48
    medusa_heads: int = 3
    medusa_layers: int = 1
    medusa_steps: int = 400
    medusa_lr: float = 3e-3
    eagle_steps: int = 1200
    eagle_lr: float = 3e-3
    eagle_train_depth: int = 2
    eagle_eval_depth: int = 4
    feature_weight: float = 1.0
    batch_rows: int = 16
    scored_positions: int = 32  # positions per row scored against the vocabulary each step (CPU cost)
    seed: int = 0
    max_files: int | None = None  # cap on corpus files (smoke tests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdec.zoo.recipe.heads", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(TRAINED_DIR), help="folder that gets medusa/ and eagle/")
    parser.add_argument("--target", default=str(TRAINED_DIR / "target"), help="the target's folder")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    default = HeadRecipe()
    for key, value in asdict(default).items():
        kind = type(value) if value is not None else int
        parser.add_argument("--" + key.replace("_", "-"), type=kind, default=value)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = HeadRecipe(**{k: getattr(args, k) for k in asdict(default)})
    command = " ".join(["python -m specdec.zoo.recipe.heads", *(argv if argv is not None else sys.argv[1:])])
    run(recipe, Path(args.target), Path(args.out), torch.device(args.device), command)
    return 0


def run(recipe: HeadRecipe, target_dir: Path, out: Path, device: torch.device, command: str = "") -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def log(message: str) -> None:
        print(message, flush=True)
        log_lines.append(message)

    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).to(device).eval()  # type: ignore[arg-type]
    for p in target.parameters():
        p.requires_grad_(False)
    parts = TargetParts.of(target)
    tokenizer = load_zoo_tokenizer(target_dir)
    corpus = collect_corpus(max_files=recipe.max_files)
    eos = end_of_text_id(tokenizer)
    train_tokens = _encode(tokenizer, [f.text for f in corpus.split("train")], eos).to(device)
    heldout_tokens = _encode(tokenizer, [f.text for f in corpus.split("heldout")], eos).to(device)
    log(f"corpus: {train_tokens.numel()} train / {heldout_tokens.numel()} held-out tokens")

    t0 = time.perf_counter()
    rows = [continuation_rows(target, train_tokens, recipe.greedy_rows, recipe.prompt_len, recipe.length, generator)]
    if recipe.sampled_rows:
        rows.append(
            continuation_rows(
                target,
                train_tokens,
                recipe.sampled_rows,
                recipe.prompt_len,
                recipe.length,
                generator,
                temperature=recipe.temperature,
            )
        )
    if recipe.text_rows:
        windows, last = sample_windows(train_tokens, recipe.text_rows, recipe.length - 1, generator)  # [n, L-1]
        rows.append(torch.cat([windows, last[:, -1:]], dim=1))  # [n, L]
    heldout_rows = continuation_rows(
        target, heldout_tokens, recipe.eval_rows, recipe.prompt_len, recipe.length, generator
    )
    train = collect(target, torch.cat(rows), recipe.prompt_len)
    generated = recipe.greedy_rows + recipe.sampled_rows  # Medusa learns the target's own continuations only
    distilled = HeadData(
        train.tokens[:generated], train.features[:generated], train.choices[:generated], recipe.prompt_len
    )
    heldout = collect(target, heldout_rows, recipe.prompt_len)
    data_seconds = round(time.perf_counter() - t0, 1)
    log(f"data: {tuple(train.tokens.shape)} train rows, {tuple(heldout.tokens.shape)} held-out rows ({data_seconds} s)")

    medusa_config = MedusaConfig(
        recipe.medusa_heads, recipe.medusa_layers, parts.hidden_size, parts.vocab_size, shared_lm_head=True
    )
    medusa = MedusaHeads(medusa_config, parts).to(device)
    medusa_run = train_loop(
        "medusa",
        medusa,
        distilled,
        HeadLoop(recipe.medusa_steps, recipe.batch_rows, recipe.medusa_lr),
        lambda index: medusa_loss(medusa, distilled, index, recipe.scored_positions),
        generator,
        log,
    )
    medusa_eval = medusa_agreement(medusa, heldout)
    log(f"medusa held-out: {medusa_eval}")

    cfg = target.config
    eagle_config = EagleConfig(
        version=1,
        layer=LayerShape(
            hidden_size=cfg.hidden_size, num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
            intermediate_size=cfg.intermediate_size, attention_input=cfg.hidden_size, rms_norm_eps=cfg.rms_norm_eps,
            rope_theta=float(cfg.rope_parameters["rope_theta"]), max_positions=cfg.max_position_embeddings,
        ),
        vocab_size=parts.vocab_size, draft_vocab_size=parts.vocab_size, target_hidden_size=parts.hidden_size,
    )  # fmt: skip
    eagle = EagleHead(eagle_config, parts).to(device)
    eagle_run = train_loop(
        "eagle", eagle, train, HeadLoop(recipe.eagle_steps, recipe.batch_rows, recipe.eagle_lr),
        lambda index: eagle_loss(
            eagle, train, index, recipe.eagle_train_depth, recipe.feature_weight, recipe.scored_positions
        ), generator, log,
    )  # fmt: skip
    eagle_eval = eagle_agreement(eagle, heldout, recipe.eagle_eval_depth)
    eagle_eval["heldout_code_depth1_top1"] = round(raw_text_agreement(eagle, target, heldout_tokens), 4)
    log(f"eagle held-out: {eagle_eval}")

    record = {
        "recipe": asdict(recipe),
        "command": command,
        "environment": environment(device),
        "data": {
            "train_rows": list(train.tokens.shape),
            "heldout_rows": list(heldout.tokens.shape),
            "seconds": data_seconds,
            "corpus_files": len(corpus.files),
        },
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    _save(out / "medusa", medusa, medusa_config, {**record, "training": medusa_run, "heldout": medusa_eval}, log_lines)
    _save(out / "eagle", eagle, eagle_config, {**record, "training": eagle_run, "heldout": eagle_eval}, log_lines)
    log(f"done in {record['seconds_total']} s")
    return {"medusa": medusa_eval, "eagle": eagle_eval, **record}


def _save(
    folder: Path, module: torch.nn.Module, config: MedusaConfig | EagleConfig, record: dict, log_lines: list[str]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    weights = {
        k: v.detach().to(torch.float16).contiguous().cpu()
        for k, v in module.state_dict().items()
        if v.is_floating_point()
    }
    weights.update({k: v.contiguous().cpu() for k, v in module.state_dict().items() if not v.is_floating_point()})
    save_file(weights, str(folder / "model.safetensors"))
    config.write(folder / "config.json")
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    (folder / "train.log").write_text("\n".join(log_lines) + "\n")
    (folder / "MODEL_CARD.md").write_text(render_card(folder.name, config, record))


def render_card(kind: str, config: MedusaConfig | EagleConfig, record: dict) -> str:
    heldout, recipe, env = record["heldout"], record["recipe"], record["environment"]
    lines = [f"# zoo:tiny-code-{kind}: {kind.capitalize()} draft head(s) for zoo:tiny-code-target", ""]
    if kind == "medusa":
        lines += [
            f"{config.num_heads} Medusa heads (one residual block `x + SiLU(Wx + b)` each) on the target's final",  # type: ignore[union-attr]
            "hidden state, ending in the target's own (tied) output layer; head i predicts token t + i + 2.",
        ]
        per = heldout["per_head_top1"]
        lines += ["", "| head | predicts | top-1 agreement | chain of heads 0..i all right |", "|---|---|---|---|"]
        lines += [f"| {i} | t+{i + 2} | {per[i]} | {heldout['chain_accept_at_least'][i]} |" for i in range(len(per))]
    else:
        lines += [
            "An EAGLE-1/2 head: `fc([E(x_{t+1}); f_t])` then one Llama decoder layer (no input norm) at the target's",
            "width; the target's embedding and output layer are shared. Trained unrolled over "
            f"{recipe['eagle_train_depth']} drafting steps.",
        ]
        per = heldout["per_depth_top1"]
        lines += [
            "",
            "| depth | top-1 agreement (earlier tokens right) | chain of depths 1..k all right |",
            "|---|---|---|",
        ]
        lines += [f"| {k + 1} | {per[k]} | {heldout['chain_accept_at_least'][k]} |" for k in range(len(per))]
        lines += [
            "",
            f"Depth 1 on held-out code itself (not the target's continuations): "
            f"{heldout['heldout_code_depth1_top1']} (tiny-code-draft: 0.67 there, 0.91 on continuations).",
        ]
    lines += [
        "",
        f"Measured teacher-forced on {heldout['positions']} positions of the target's greedy continuations of "
        f"{recipe['eval_rows']} held-out prefixes ({recipe['prompt_len']} tokens, from the held-out split of the "
        "corpus, never trained on). Acceptance per position for a greedy target is the chain column: the chance that "
        "the first k drafted tokens are all accepted. Mean accepted chain: "
        f"{heldout['mean_accepted_chain']} tokens per target forward (plus the target's own token).",
        "",
        "## How it was made",
        "",
        f"- Command: `{record['command']}`",
        f"- Data: {recipe['greedy_rows']} greedy and {recipe['sampled_rows']} sampled (T={recipe['temperature']}) "
        f"continuations of {recipe['prompt_len']}-token training-split prefixes and {recipe['text_rows']} plain "
        f"training-split windows, {recipe['length']} tokens each; the target's teacher-forced features and top-1 "
        "choices on them.",
        f"- Steps: {record['training']['steps']} of {recipe['batch_rows']} rows; training "
        f"{record['training']['seconds']} s; whole recipe (data, both heads, evaluation) {record['seconds_total']} s.",
        f"- Machine: {env['device']}, {env['platform']}; Python {env['python']}, torch {env['torch']}, "
        f"transformers {env['transformers']}.",
        "- Weights: float16 `model.safetensors`; `config.json` is the head's configuration (`head_type`).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
