"""The recipe of the zoo's trained pair: ``python -m specdec.zoo.recipe.train --out DIR``.

Steps (each logged, all numbers written to ``DIR/training.json``):

1. collect the running Python's standard library sources, split them (``corpus.py``), write ``manifest.json``;
2. train a byte-level BPE tokenizer on the training split;
3. pretrain the target (a Llama) on next-token loss;
4. distil the draft (a much smaller Llama) from the target;
5. measure held-out perplexity of both and their teacher-forced top-1 agreement on held-out code;
6. save ``target/`` and ``draft/`` (float16 safetensors, config, identical tokenizer files), the held-out prompt
   set ``code-heldout.jsonl`` and ``MODEL_CARD.md``.

The default ``--out`` is the package's own ``models/tiny-code`` folder, which is what ``zoo:tiny-code-target`` and
``zoo:tiny-code-draft`` load. Acceptance and speed are measured afterwards by ``python -m specdec.zoo.recipe.evaluate``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from specdec.zoo.recipe.card import write_card
from specdec.zoo.recipe.corpus import collect_corpus, extract_prompts, write_manifest, write_prompts
from specdec.zoo.recipe.trainer import LoopConfig, distil_draft, greedy_rows, perplexity, train_target
from specdec.zoo.registry import TRAINED_DIR
from specdec.zoo.tokenizer import (
    CHAT_TEMPLATE,
    END_OF_TEXT,
    end_of_text_id,
    load_zoo_tokenizer,
    train_tokenizer,
    wrap_tokenizer,
)


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int

    def config(self, vocab_size: int, eos_id: int, max_positions: int) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.heads,
            max_position_embeddings=max_positions,
            rope_theta=10000.0,  # type: ignore[call-arg]  # a legacy key transformers 5 still accepts
            tie_word_embeddings=True,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )


@dataclass(frozen=True)
class Recipe:
    vocab_size: int = 4096
    target: LlamaShape = field(default_factory=lambda: LlamaShape(hidden=256, layers=12, heads=4, intermediate=640))
    draft: LlamaShape = field(default_factory=lambda: LlamaShape(hidden=192, layers=2, heads=3, intermediate=512))
    max_positions: int = 1024
    seq_len: int = 512
    batch_size: int = 32
    target_steps: int = 2500
    draft_steps: int = 8000
    target_lr: float = 2e-3
    draft_lr: float = 3e-3
    warmup: int = 200
    ce_weight: float = 0.5
    greedy_rows: int = 16384  # the target's greedy continuations of training prefixes, for distillation
    greedy_prompt_len: int = 16
    greedy_length: int = 128  # prefix + continuation
    greedy_fraction: float = 0.75  # share of distillation batches drawn from the greedy rows
    seed: int = 0
    max_files: int | None = None  # cap on corpus files (tests); None = the whole standard library
    stdlib: str | None = None  # a copy of a standard library to read instead of the running Python's
    stdlib_version: str | None = None  # its Python version, for the manifest


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    recipe = Recipe(
        vocab_size=args.vocab_size,
        target=LlamaShape(args.target_hidden, args.target_layers, args.target_heads, args.target_intermediate),
        draft=LlamaShape(args.draft_hidden, args.draft_layers, args.draft_heads, args.draft_intermediate),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        target_steps=args.target_steps,
        draft_steps=args.draft_steps,
        warmup=min(200, max(args.target_steps // 10, 1)),
        greedy_rows=args.greedy_rows,
        seed=args.seed,
        max_files=args.max_files,
        stdlib=args.stdlib,
        stdlib_version=args.stdlib_version,
    )
    command = " ".join(["python -m specdec.zoo.recipe.train", *sys.argv[1:]])
    run_recipe(recipe, Path(args.out), _device(args.device), args.stage, command)
    return 0


def run_recipe(recipe: Recipe, out: Path, device: torch.device, stage: str = "all", command: str = "") -> dict:
    """Run the recipe (``stage``: "all", "target" or "draft") into ``out``; return the training record.

    Stage "target" writes the tokenizer and the target; stage "draft" reads them back from ``out`` (the float16
    target as saved, i.e. the one that ships) and distils the draft. "all" does both in one process.
    """
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / f"train-{stage}.log").open("w")

    def log(message: str) -> None:
        print(message, flush=True)
        log_file.write(message + "\n")
        log_file.flush()

    started = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    record_file = out / "training.json"
    record = json.loads(record_file.read_text()) if stage == "draft" else {"commands": {}, "seconds": {}}

    root = Path(recipe.stdlib) if recipe.stdlib else None
    corpus = collect_corpus(root, recipe.stdlib_version, max_files=recipe.max_files)
    manifest = corpus.manifest()
    if stage == "draft" and manifest["manifest_sha256"] != record["corpus"]["manifest_sha256"]:
        raise SystemExit(f"corpus differs from the one the target was trained on ({record_file}); same --stdlib?")
    write_manifest(corpus, out / "manifest.json")
    train_files, heldout_files = corpus.split("train"), corpus.split("heldout")
    log(f"corpus: {len(train_files)} train / {len(heldout_files)} held-out files from {corpus.root}")

    if stage == "draft":
        tokenizer = load_zoo_tokenizer(out / "target")
    else:
        tokenizer = wrap_tokenizer(train_tokenizer((f.text for f in train_files), recipe.vocab_size))
    eos_id = end_of_text_id(tokenizer)
    train_tokens = _encode(tokenizer, [f.text for f in train_files], eos_id).to(device)
    heldout_tokens = _encode(tokenizer, [f.text for f in heldout_files], eos_id).to(device)
    log(f"tokenizer: {len(tokenizer)} tokens; {train_tokens.numel()} train / {heldout_tokens.numel()} held-out tokens")
    eval_len = min(recipe.seq_len, 256)

    generator = torch.Generator().manual_seed(recipe.seed)
    if stage in ("all", "target"):
        torch.manual_seed(recipe.seed)
        target = LlamaForCausalLM(recipe.target.config(len(tokenizer), eos_id, recipe.max_positions)).to(device)  # type: ignore[arg-type]  # transformers' decorated `to` confuses mypy
        loop = LoopConfig(recipe.target_steps, recipe.batch_size, recipe.seq_len, recipe.target_lr, recipe.warmup)

        def target_probe() -> float:
            return perplexity(target, heldout_tokens, eval_len, 64)

        result = train_target(target, train_tokens, loop, generator, probe=target_probe, log=log)
        record.update(
            recipe=asdict(recipe),
            environment=environment(device),
            corpus={k: v for k, v in manifest.items() if k != "files"},
            tokens={"train": train_tokens.numel(), "heldout": heldout_tokens.numel()},
            tokenizer={"kind": "byte-level BPE", "vocab_size": len(tokenizer), "special": END_OF_TEXT},
            target=_model_record(target, recipe.target, result, heldout_tokens, eval_len),
        )
        record["commands"]["target"] = command
        _save(target, tokenizer, out / "target")
    if stage in ("all", "draft"):
        target = AutoModelForCausalLM.from_pretrained(out / "target", dtype=torch.float32).to(device).eval()  # type: ignore[arg-type]  # transformers' decorated `to` confuses mypy
        generator.manual_seed(recipe.seed + 1)
        greedy = greedy_rows(
            target, train_tokens, recipe.greedy_rows, recipe.greedy_prompt_len, recipe.greedy_length, generator
        )
        probe_rows = greedy_rows(target, heldout_tokens, 64, recipe.greedy_prompt_len, recipe.greedy_length, generator)
        log(f"greedy rows: {tuple(greedy.shape)} from the target (+ {probe_rows.shape[0]} held-out rows for the probe)")
        torch.manual_seed(recipe.seed + 1)
        draft = LlamaForCausalLM(recipe.draft.config(len(tokenizer), eos_id, recipe.max_positions)).to(device)  # type: ignore[arg-type]  # transformers' decorated `to` confuses mypy
        loop = LoopConfig(recipe.draft_steps, recipe.batch_size, recipe.seq_len, recipe.draft_lr, recipe.warmup)

        def draft_probe() -> float:
            return _greedy_agreement(draft, probe_rows, recipe.greedy_prompt_len)

        result = distil_draft(
            draft,
            target,
            train_tokens,
            greedy,
            loop,
            generator,
            recipe.ce_weight,
            recipe.greedy_fraction,
            probe=draft_probe,
            log=log,
        )
        record.update(
            recipe=asdict(recipe),
            draft=_model_record(draft, recipe.draft, result, heldout_tokens, eval_len),
            heldout_top1_agreement=round(_top1_agreement(target, draft, heldout_tokens, eval_len), 4),
            heldout_greedy_agreement=round(draft_probe(), 4),
        )
        record["commands"]["draft"] = command
        _save(draft, tokenizer, out / "draft")
        write_prompts(extract_prompts(heldout_files), out / "code-heldout.jsonl")
    record["seconds"][stage] = round(time.perf_counter() - started, 1)
    record_file.write_text(json.dumps(record, indent=1) + "\n")
    if "draft" in record:
        write_card(out)
    log(f"stage {stage} done in {record['seconds'][stage]} s")
    log_file.close()
    return record


def _encode(tokenizer, texts: list[str], eos_id: int) -> torch.Tensor:
    """One flat stream: each file's tokens followed by END_OF_TEXT -> [N] int64."""
    ids: list[int] = []
    for encoding in tokenizer.backend_tokenizer.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def _model_record(model: PreTrainedModel, shape: LlamaShape, result, heldout: torch.Tensor, eval_len: int) -> dict:
    return {
        "shape": asdict(shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "train_seconds": result.seconds,
        "final_train_loss": result.final_loss,
        "loss_log": result.log,
        "probe_log": result.probes,
        "heldout_perplexity": round(perplexity(model, heldout, eval_len), 3),
    }


@torch.no_grad()
def _greedy_agreement(draft: PreTrainedModel, rows: torch.Tensor, prompt_len: int) -> float:
    """Teacher-forced on the target's greedy rows ([M, L]): fraction of continuation tokens the draft predicts."""
    draft.eval()
    agree = total = 0
    for batch in rows.split(32):
        predicted = draft(input_ids=batch).logits[:, prompt_len - 1 : -1].argmax(-1)  # [b, L - P]
        agree += (predicted == batch[:, prompt_len:]).sum().item()
        total += predicted.numel()
    return agree / max(total, 1)


@torch.no_grad()
def _top1_agreement(
    target: PreTrainedModel, draft: PreTrainedModel, tokens: torch.Tensor, seq_len: int, max_windows: int = 64
) -> float:
    """Teacher-forced: fraction of held-out positions where the draft's argmax equals the target's."""
    target.eval()
    draft.eval()
    n = min((tokens.numel() // seq_len), max_windows)
    batch = tokens[: n * seq_len].view(n, seq_len)  # [n, S]
    agree = total = 0
    for rows in batch.split(8):
        agree += (target(input_ids=rows).logits.argmax(-1) == draft(input_ids=rows).logits.argmax(-1)).sum().item()
        total += rows.numel()
    return agree / max(total, 1)


def _save(model: PreTrainedModel, tokenizer, folder: Path) -> None:
    """float16 safetensors + config + the shared tokenizer files (a fixed tokenizer_config.json, version-proof)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(folder)  # type: ignore[arg-type]  # transformers' decorated `to` confuses mypy
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "pad_token": END_OF_TEXT,
        "model_max_length": model.config.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1) + "\n")
    model.to(torch.float32)  # type: ignore[arg-type]  # transformers' decorated `to` confuses mypy


def environment(device: torch.device) -> dict:
    """The software and machine a recipe ran on (recorded beside its results)."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
    }


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    default = Recipe()
    parser = argparse.ArgumentParser(prog="python -m specdec.zoo.recipe.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(TRAINED_DIR), help="output folder (default: the zoo's own)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--stage", default="all", choices=["all", "target", "draft"])
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--vocab-size", type=int, default=default.vocab_size)
    parser.add_argument("--seq-len", type=int, default=default.seq_len)
    parser.add_argument("--batch-size", type=int, default=default.batch_size)
    parser.add_argument("--target-steps", type=int, default=default.target_steps)
    parser.add_argument("--draft-steps", type=int, default=default.draft_steps)
    parser.add_argument("--target-hidden", type=int, default=default.target.hidden)
    parser.add_argument("--target-layers", type=int, default=default.target.layers)
    parser.add_argument("--target-heads", type=int, default=default.target.heads)
    parser.add_argument("--target-intermediate", type=int, default=default.target.intermediate)
    parser.add_argument("--draft-hidden", type=int, default=default.draft.hidden)
    parser.add_argument("--draft-layers", type=int, default=default.draft.layers)
    parser.add_argument("--draft-heads", type=int, default=default.draft.heads)
    parser.add_argument("--draft-intermediate", type=int, default=default.draft.intermediate)
    parser.add_argument("--greedy-rows", type=int, default=default.greedy_rows)
    parser.add_argument("--max-files", type=int, default=None, help="use only this many corpus files (smoke tests)")
    parser.add_argument(
        "--stdlib", default=None, help="read this copy of a standard library instead of the running one"
    )
    parser.add_argument("--stdlib-version", default=None, help="the Python version of --stdlib (for the manifest)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
