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
