"""Held-out code prompts: short prefixes (1-3 lines, starting at a ``def``) of files the models never trained on.

The recipe extracts them from the held-out split and writes them as JSON lines; the default suite and the model
card's evaluation read them back with :func:`load_prompts`.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

from specdec.zoo.corpus import CorpusFile

HELDOUT_PROMPTS = Path(__file__).parent / "models" / "tiny-code" / "code-heldout.jsonl"
_DEF_LINE = re.compile(r"^\s*(async\s+)?def \w+\(")


def extract_prompts(files: Sequence[CorpusFile], count: int = 32, per_file: int = 2) -> list[dict]:
    """Deterministic prompts: per file, up to ``per_file`` ``def`` lines spread over it, each with 0-2 lines after.

    Returns rows ``{"id", "source", "line", "prompt"}``; the prompt is dedented and ends with a newline unless it is a
    single ``def`` line, which is cut after its opening parenthesis (like ``def parse_args(``).
    """
    rows: list[dict] = []
    for file in files:
        lines = file.text.splitlines(keepends=True)
        starts = [i for i, line in enumerate(lines) if _DEF_LINE.match(line) and len(line) < 100]
        if not starts:
            continue
        picks = sorted({starts[(j * len(starts)) // per_file] for j in range(per_file)})
        for i in picks:
            extra = len(rows) % 3  # 0, 1 or 2 lines after the def line
            if extra == 0:
                text = lines[i].strip()
                text = text[: text.index("(") + 1]
            else:
                text = textwrap.dedent("".join(lines[i : i + 1 + extra]))
                if not text.endswith("\n"):
                    text += "\n"
            rows.append({"id": f"heldout-{len(rows):02d}", "source": file.path, "line": i + 1, "prompt": text})
            if len(rows) == count:
                return rows
    return rows


def write_prompts(rows: Sequence[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def load_prompts(path: Path = HELDOUT_PROMPTS) -> list[str]:
    """The prompt texts of a JSON-lines prompt file (by default the zoo's held-out code prompts)."""
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
