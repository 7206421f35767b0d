"""The model card of the trained pair, rendered from the records the recipe and the evaluation write.

``training.json`` (written by ``specdec.zoo.recipe.train``) and ``evaluation.json`` (written by
``specdec.zoo.recipe.evaluate``) hold every figure; ``MODEL_CARD.md`` is only their rendering, so a rerun of either
command rewrites the card.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_card(folder: Path) -> Path:
    training = json.loads((folder / "training.json").read_text())
    evaluation_file = folder / "evaluation.json"
    evaluation = json.loads(evaluation_file.read_text()) if evaluation_file.exists() else None
    path = folder / "MODEL_CARD.md"
    path.write_text(render_card(training, evaluation))
    return path


def render_card(training: dict, evaluation: dict | None) -> str:
    corpus, env, recipe = training["corpus"], training["environment"], training["recipe"]
    lines = [
        "# tiny-code: the zoo's trained target/draft pair",
        "",
        "`zoo:tiny-code-target` and `zoo:tiny-code-draft`: two small Llama-architecture causal LMs for Python code",
        "that share one byte-level BPE tokenizer. The target was trained on next-token loss; the draft was distilled",
        "from it so that the two agree often. They exist so that specdec's tests, default suite and CPU benchmarks",
        "have a realistic pair with no download. They are not useful language models.",
        "",
        "## Corpus",
        "",
        f"- The `.py` sources of the Python {corpus['python_version']} standard library on the training machine",
        f"  ({corpus['counts']['train']} training files, {corpus['bytes']['train']:,} bytes; "
        f"{corpus['counts']['heldout']} held-out files, {corpus['bytes']['heldout']:,} bytes).",
        f"- Selection and split: {corpus['selection']['heldout_rule']}; excluded folders "
        f"{', '.join(corpus['selection']['excluded_dirs'])}; files over {corpus['selection']['max_file_bytes']:,}"
        " bytes or not UTF-8 skipped.",
        f"- Every file with its sha256 and split: `manifest.json` (manifest sha256 `{corpus['manifest_sha256']}`).",
        f"- License: {corpus['license_note']}",
        f"- Tokens: {training['tokens']['train']:,} training, {training['tokens']['heldout']:,} held-out "
        f"({training['tokenizer']['kind']}, {training['tokenizer']['vocab_size']} tokens, "
        f"`{training['tokenizer']['special']}` as BOS/EOS/padding).",
        "",
        "## Models",
        "",
        "| | target | draft |",
        "| --- | --- | --- |",
    ]
    target, draft = training["target"], training["draft"]
    rows = [
        ("architecture", "Llama, tied embeddings", "Llama, tied embeddings"),
        ("hidden / layers / heads", _shape(target), _shape(draft)),
        ("intermediate", target["shape"]["intermediate"], draft["shape"]["intermediate"]),
        ("parameters", f"{target['parameters']:,}", f"{draft['parameters']:,}"),
        ("objective", "next-token cross-entropy", f"KL to the target + {recipe['ce_weight']} x CE on its argmax"),
        ("steps x batch x length", _steps(target, recipe), _steps(draft, recipe)),
        ("tokens seen", f"{target['tokens_seen']:,}", f"{draft['tokens_seen']:,}"),
        ("final training loss", target["final_train_loss"], draft["final_train_loss"]),
        ("held-out perplexity", target["heldout_perplexity"], draft["heldout_perplexity"]),
        ("training time", f"{target['train_seconds']} s", f"{draft['train_seconds']} s"),
        ("stored as", "float16 safetensors", "float16 safetensors"),
    ]
    lines += [f"| {name} | {a} | {b} |" for name, a, b in rows]
    lines += [
        "",
        "Teacher-forced top-1 agreement of the draft with the target: "
        f"{training['heldout_top1_agreement']} on held-out code, {training['heldout_greedy_agreement']} on the target's"
        " greedy continuations of held-out prefixes (what speculation meets).",
        "",
        "## How they were trained",
        "",
        "In two stages (the draft stage reads the float16 target that ships):",
        "",
        "```",
        training["commands"]["target"],
        training["commands"]["draft"],
        "```",
        "",
        f"Machine: {env['device']}; Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}.",
        "Wall time per stage (corpus, tokenizer, training, perplexity): "
        + ", ".join(f"{stage} {seconds} s" for stage, seconds in training["seconds"].items())
        + ". The recipe also runs on a CPU (`--device cpu`); see the CPU estimate under Evaluation.",
        "",
        f"`--stdlib .carry/python{'.'.join(corpus['python_version'].split('.')[:2])}` is a copy of the `.py` files and"
        f" `LICENSE.txt` of a Python {corpus['python_version']} standard library (the development machines'),",
        "carried to the GPU machine, whose Python has no test suite. Without `--stdlib` the recipe reads the running",
        "Python's own standard library: on a Python of that same version it finds the same files (compare",
        "`manifest.json`); on another version it trains on other files.",
        *_notes(training),
        "",
        "## Evaluation",
        "",
    ]
    lines += (
        _evaluation_lines(evaluation)
        if evaluation
        else ["Not yet measured: run `python -m specdec.zoo.recipe.evaluate`."]
    )
    return "\n".join(lines) + "\n"


def _evaluation_lines(evaluation: dict) -> list[str]:
    env = evaluation["environment"]
    lines = [
        f"Command: `{evaluation['command']}`",
        *_notes(evaluation),
        "",
        f"Machine: {env['device']}; Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}.",
        *(
            [
                f"Load average (1, 5, 15 min) at start {evaluation['load_average']['start']}, at end "
                f"{evaluation['load_average']['end']} (this run's own threads count too)."
            ]
            if "load_average" in evaluation
            else []
        ),
        f"Prompts: the {evaluation['prompts']} held-out code prompts of `code-heldout.jsonl` (prefixes of files the",
        f"models never saw), {evaluation['max_new_tokens']} new tokens each, greedy.",
        "",
        "### Cost per token on the CPU",
        "",
        "One decode step (one new token, KV cache, float32, "
        f"{evaluation['cost']['threads']} threads), median of {evaluation['cost']['repeats']} runs:",
        f"target {evaluation['cost']['target_ms']} ms, draft {evaluation['cost']['draft_ms']} ms:"
        f" the target costs **{evaluation['cost']['ratio']}x** the draft.",
        "",
        "### Acceptance",
        "",
        "Engine-free measurement (`specdec.zoo.recipe.agreement`): the draft teacher-forced on the target's greedy",
        "continuations; acceptance is accepted drafted tokens / proposed drafted tokens.",
        "",
        "| K | agreement | acceptance rate | tokens per target forward |",
        "| --- | --- | --- | --- |",
    ]
    for row in evaluation["simulated"]:
        lines.append(
            f"| {row['k']} | {row['agreement']} | {row['acceptance_rate']} | {row['tokens_per_target_forward']} |"
        )
    engine = evaluation.get("engine")
    lines += ["", "### Speculative decoding with the engine", ""]
    if engine:
        lines += [
            f"`SpeculativeEngine`, greedy, `stop_at_eos=False`, {engine['threads']} CPU threads, one warm-up generation"
            f" first; baseline = the target alone "
            f"({engine['baseline_tokens_per_second']} tokens/s).",
            "",
            "| K | acceptance rate | mean tokens per forward | tokens/s | speedup |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in engine["rows"]:
            lines.append(
                f"| {row['k']} | {row['acceptance_rate']} | {row['mean_tokens_per_forward']} | "
                f"{row['tokens_per_second']} | {row['speedup']}x |"
            )
        lines += ["", f"Best: K={engine['best_k']}, **{engine['best_speedup']}x** over the baseline."]
    else:
        lines.append("Not measured: the engine (`specdec.SpeculativeEngine`) was not importable when this ran.")
    cpu = evaluation.get("cpu_training_estimate")
    if cpu:
        lines += [
            "",
            "### Training the recipe on a CPU",
            "",
            f"Measured on {cpu['device']}: target {cpu['target_steps_per_second']} steps/s, draft "
            f"{cpu['draft_steps_per_second']} steps/s at the recipe's batch; the default step counts would take about "
            f"**{cpu['estimated_hours']} hours** (tokenizer and corpus add about a minute).",
        ]
    return lines


def _notes(record: dict) -> list[str]:
    """A record's notes (what a later reader must know about it, for example a command since renamed), each its own
    paragraph after a blank line."""
    return [line for note in record.get("notes", []) for line in ("", f"Note: {note}")]


def _shape(model: dict) -> str:
    shape = model["shape"]
    return f"{shape['hidden']} / {shape['layers']} / {shape['heads']}"


def _steps(model: dict, recipe: dict) -> str:
    return f"{model['steps']} x {recipe['batch_size']} x {recipe['seq_len']}"
