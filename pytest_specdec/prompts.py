"""Prompt sets of a suite: inline texts or token ids, a prompt file, a zoo prompt set, or random token ids.

Files and zoo sets are read when the suite is parsed (so a missing or short file fails collection); random token
ids are drawn when a case runs, because they need the target's vocabulary size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pytest_specdec.yaml_source import KeyPath, LocatedYaml
from specdec.loading import ZOO_PREFIX
from specdec.zoo.prompts import prompt_set_file

Prompt = str | tuple[int, ...]  # text, or token ids
FILE_SUFFIXES = (".jsonl", ".json", ".txt")
PROMPT_KEYS = ("file", "count", "random_tokens", "seed")
MAX_RANDOM_LENGTH = 1_000_000  # tokens per random prompt: beyond any model's context
MAX_RANDOM_TOKENS = 10_000_000  # random token ids per prompt set (count x length): 80 MB of int64


@dataclass(frozen=True)
class RandomTokens:
    """``count`` prompts of ``length`` token ids drawn uniformly from the target's vocabulary with ``seed``."""

    length: int
    count: int
    seed: int


@dataclass(frozen=True)
class PromptSet:
    source: str  # "inline", the file it came from, "zoo:NAME", or "random"
    prompts: tuple[Prompt, ...] = ()  # empty for random token ids
    random: RandomTokens | None = None

    @property
    def count(self) -> int:
        return self.random.count if self.random is not None else len(self.prompts)

    def digest(self) -> str:
        """A short hash of what the prompts are (content, not location), for baselines to notice a change."""
        payload = {"random": self.random.__dict__} if self.random is not None else {"prompts": list(self.prompts)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def materialize(self, vocab_size: int) -> list[Prompt]:
        """The prompts as the engine takes them (random ids are drawn here, on the CPU, repeatably)."""
        if self.random is None:
            return list(self.prompts)
        generator = torch.Generator().manual_seed(self.random.seed)
        ids = torch.randint(0, vocab_size, (self.random.count, self.random.length), generator=generator)
        return [tuple(row) for row in ids.tolist()]


def batches(prompts: list[Prompt], batch_size: int) -> list[list[Prompt]]:
    """Every prompt once, in batches of ``batch_size``; the last batch is filled by cycling from the start."""
    count = max(len(prompts), batch_size)
    count = -(-count // batch_size) * batch_size  # round up to whole batches
    cycled = [prompts[i % len(prompts)] for i in range(count)]
    return [cycled[i : i + batch_size] for i in range(0, count, batch_size)]


def parse_prompts(doc: LocatedYaml, key_path: KeyPath, value: Any) -> PromptSet:
    """A suite's ``prompts``: a list (texts or id lists), ``{file, count}``, or ``{random_tokens, count, seed}``."""
    if isinstance(value, list):
        return PromptSet(source="inline", prompts=_inline(doc, key_path, value))
    if not isinstance(value, dict):
        raise doc.error(
            key_path,
            f"expected a list of prompts, {{file: PATH, count: N}} or {{random_tokens: LENGTH, count: N, seed: S}}, "
            f"got {_kind(value)}",
        )
    unknown = [k for k in value if k not in PROMPT_KEYS]
    if unknown:
        raise doc.error((*key_path, unknown[0]), f"unknown prompts key: expected one of {', '.join(PROMPT_KEYS)}")
    count = value.get("count")
    if count is not None and not _positive_int(count):
        raise doc.error((*key_path, "count"), f"expected an integer >= 1, got {count!r}")
    if ("file" in value) == ("random_tokens" in value):
        raise doc.error(key_path, "give exactly one of `file` (a prompt file or zoo:NAME) and `random_tokens`")
    if "random_tokens" in value:
        length, seed = value["random_tokens"], value.get("seed", 0)
        if not _positive_int(length):
            raise doc.error((*key_path, "random_tokens"), f"expected a prompt length >= 1 (tokens), got {length!r}")
        if length > MAX_RANDOM_LENGTH:
            raise doc.error(
                (*key_path, "random_tokens"), f"a prompt length is at most {MAX_RANDOM_LENGTH:,} tokens, got {length:,}"
            )
        if (count or 1) * length > MAX_RANDOM_TOKENS:
            raise doc.error(
                (*key_path, "count"),
                f"{count:,} prompts of {length:,} random tokens are {count * length:,} token ids; "
                f"at most {MAX_RANDOM_TOKENS:,} in all: lower count or random_tokens",
            )
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise doc.error((*key_path, "seed"), f"expected an integer seed, got {seed!r}")
        return PromptSet(source="random", random=RandomTokens(length=length, count=count or 1, seed=seed))
    if "seed" in value:
        raise doc.error((*key_path, "seed"), "`seed` only applies to `random_tokens` prompts")
    file_value = value["file"]
    if not isinstance(file_value, str) or not file_value.strip():
        raise doc.error((*key_path, "file"), f"expected a prompt file path or zoo:NAME, got {file_value!r}")
    if file_value.startswith(ZOO_PREFIX):
        path, source = prompt_set_file(file_value), file_value
        if not path.is_file():
            raise doc.error(
                (*key_path, "file"),
                f"the zoo has no prompt set {file_value!r} (looked for {path}); "
                "expected zoo:NAME for a file specdec/zoo/prompts/NAME.jsonl or specdec/zoo/models/*/NAME.jsonl",
            )
    else:
        path = (doc.path.parent / Path(file_value).expanduser()).resolve()
        source = str(path)
        if not path.is_file():
            raise doc.error(
                (*key_path, "file"),
                f"prompt file {file_value!r} does not exist (looked for {path}; "
                "a relative path starts at the suite file's folder)",
            )
    prompts = _read_prompt_file(doc, (*key_path, "file"), path)
    if count is not None:
        if count > len(prompts):
            raise doc.error((*key_path, "count"), f"count is {count} but {path.name} holds only {len(prompts)} prompts")
        prompts = prompts[:count]
    return PromptSet(source=source, prompts=prompts)


def _read_prompt_file(doc: LocatedYaml, key_path: KeyPath, path: Path) -> tuple[Prompt, ...]:
    if path.suffix not in FILE_SUFFIXES:
        raise doc.error(key_path, f"prompt file {path.name!r}: expected a {', '.join(FILE_SUFFIXES)} file")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".txt":
            items: list[Any] = [line for line in text.splitlines() if line.strip()]
        elif path.suffix == ".json":
            items = json.loads(text)
            if not isinstance(items, list):
                raise ValueError("expected a JSON list of prompts")
        else:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise doc.error(key_path, f"cannot read prompt file {path}: {error}") from None
    rows = [item.get("prompt", item.get("text")) if isinstance(item, dict) else item for item in items]
    prompts = _inline(doc, key_path, rows, where=f" in {path.name}")
    return prompts


def _inline(doc: LocatedYaml, key_path: KeyPath, rows: list[Any], where: str = "") -> tuple[Prompt, ...]:
    if not rows:
        raise doc.error(key_path, f"no prompts{where}: expected at least one")
    out: list[Prompt] = []
    for index, row in enumerate(rows):
        item_path = key_path if where else (*key_path, index)
        if isinstance(row, str) and row:  # any character: indentation alone is a fair code prompt
            out.append(row)
        elif isinstance(row, list) and row and all(isinstance(t, int) and not isinstance(t, bool) for t in row):
            if min(row) < 0:
                raise doc.error(item_path, f"prompt {index}{where}: token ids must be >= 0")
            out.append(tuple(row))
        else:
            raise doc.error(
                item_path, f"prompt {index}{where}: expected non-empty text or a list of token ids, got {_kind(row)}"
            )
    return tuple(out)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _kind(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, (dict, list)) else type(value).__name__
