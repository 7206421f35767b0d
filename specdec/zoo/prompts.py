"""Held-out code prompts: short prefixes (1-3 lines, starting at a ``def``) of files the models never trained on.

The recipe extracts them from the held-out split and writes them as JSON lines (``recipe/corpus.py``); the default
suite, the benchmarks and the model card's evaluation read them back with :func:`load_prompts`.
"""

from __future__ import annotations

import json
from pathlib import Path

HELDOUT_PROMPTS = Path(__file__).parent / "models" / "tiny-code" / "code-heldout.jsonl"


def load_prompts(path: Path = HELDOUT_PROMPTS) -> list[str]:
    """The prompt texts of a JSON-lines prompt file (by default the zoo's held-out code prompts)."""
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def prompt_set_file(name: str) -> Path:
    """Where the zoo keeps prompt set ``name`` (``zoo:NAME`` or ``NAME``): ``specdec/zoo/prompts/NAME.jsonl``, else
    next to a zoo model (``specdec/zoo/models/*/NAME.jsonl``); the first candidate when none exists."""
    name = name.removeprefix("zoo:")
    zoo = Path(__file__).parent
    candidates = [zoo / "prompts" / f"{name}.jsonl", *sorted(zoo.glob(f"models/*/{name}.jsonl"))]
    return next((path for path in candidates if path.is_file()), candidates[0])


def load_prompt_set(name: str) -> list[str]:
    """The prompt texts of the zoo's prompt set ``name`` (``zoo:code-heldout``, ``zoo:code-repeat``,
    ``zoo:spec-categories``: 13 prompts each of conversation, translation, summarization, qa, math and rag, every
    row with its ``category``)."""
    path = prompt_set_file(name)
    if not path.is_file():
        raise FileNotFoundError(f"the zoo has no prompt set {name!r} (looked for {path})")
    return load_prompts(path)
