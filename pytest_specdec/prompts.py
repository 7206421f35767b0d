"""Prompt sets of a suite: inline texts or token ids, a prompt file, a zoo prompt set, or random token ids.

Files and zoo sets are read when the suite is parsed (so a missing or short file fails collection); random token
ids are drawn when a case runs, because they need the target's vocabulary size.

A file whose rows carry a ``category`` (``zoo:spec-categories``: conversation, translation, ...) is a categorised
set: ``categories:`` selects some, ``count`` is per category, and batches never mix categories, so that each
category is measured on its own.
"""

from __future__ import annotations

import difflib
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
PROMPT_KEYS = ("file", "count", "categories", "random_tokens", "seed")
MAX_RANDOM_LENGTH = 1_000_000  # tokens per random prompt: beyond any model's context
MAX_RANDOM_TOKENS = 10_000_000  # random token ids per prompt set (count x length): 80 MB of int64


@dataclass(frozen=True)
class RandomTokens:
    """``count`` prompts of ``length`` token ids drawn uniformly from the target's vocabulary with ``seed``."""

    length: int
    count: int
    seed: int


@dataclass(frozen=True)
class PromptBatch:
    """One ``generate`` call's prompts, all of one category (None for a set without categories)."""

    category: str | None
    prompts: list[Prompt]


@dataclass(frozen=True)
class PromptSet:
    source: str  # "inline", the file it came from, "zoo:NAME", or "random"
    prompts: tuple[Prompt, ...] = ()  # empty for random token ids
    random: RandomTokens | None = None
    categories: tuple[str, ...] = ()  # the category of each prompt (grouped, in the suite's order); () if none

    @property
    def count(self) -> int:
        return self.random.count if self.random is not None else len(self.prompts)

    def category_counts(self) -> dict[str, int]:
        """Prompts per category, in order ({} for a set without categories)."""
        counts: dict[str, int] = {}
        for category in self.categories:
            counts[category] = counts.get(category, 0) + 1
        return counts

    def digest(self) -> str:
        """A short hash of what the prompts are (content, not location), for baselines to notice a change; the
        categories count only where there are some, so that the digests of sets without them stay as they were."""
        payload: dict[str, Any] = (
            {"random": self.random.__dict__} if self.random is not None else {"prompts": list(self.prompts)}
        )
        if self.categories:
            payload["categories"] = list(self.categories)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def batches(self, vocab_size: int, batch_size: int) -> list[PromptBatch]:
        """Every prompt once in batches of ``batch_size``, each batch within one category (see :func:`batches`)."""
        prompts = self.materialize(vocab_size)
        if not self.categories:
            return [PromptBatch(None, batch) for batch in batches(prompts, batch_size)]
        out: list[PromptBatch] = []
        for category in self.category_counts():
            mine = [p for p, c in zip(prompts, self.categories, strict=True) if c == category]
            out.extend(PromptBatch(category, batch) for batch in batches(mine, batch_size))
        return out

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
        if "categories" in value:
            raise doc.error((*key_path, "categories"), "`categories` only applies to a prompt `file` with categories")
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
    prompts, labels = _read_prompt_file(doc, (*key_path, "file"), path)
    if not labels:
        if "categories" in value:
            raise doc.error(
                (*key_path, "categories"),
                f"{path.name} has no categories (no row has a `category`): remove `categories`, or use a "
                "categorised set such as zoo:spec-categories",
            )
        if count is not None:
            if count > len(prompts):
                raise doc.error(
                    (*key_path, "count"), f"count is {count} but {path.name} holds only {len(prompts)} prompts"
                )
            prompts = prompts[:count]
        return PromptSet(source=source, prompts=prompts)
    known = list(dict.fromkeys(labels))  # in the file's order
    chosen = (
        _categories(doc, (*key_path, "categories"), value["categories"], known, path)
        if "categories" in value
        else known
    )
    selected: list[Prompt] = []
    categories: list[str] = []
    for category in chosen:
        mine = [p for p, label in zip(prompts, labels, strict=True) if label == category]
        if count is not None and count > len(mine):
            raise doc.error(
                (*key_path, "count"),
                f"count is {count} per category but category {category!r} of {path.name} holds only {len(mine)} "
                "prompts",
            )
        mine = mine[:count] if count is not None else mine
        selected.extend(mine)
        categories.extend([category] * len(mine))
    return PromptSet(source=source, prompts=tuple(selected), categories=tuple(categories))


def _categories(doc: LocatedYaml, key_path: KeyPath, value: Any, known: list[str], path: Path) -> list[str]:
    """``categories:``: one category or a non-empty list of distinct ones, each a category of the file."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise doc.error(key_path, f"expected a non-empty list of categories of {path.name}: {', '.join(known)}")
    out: list[str] = []
    for index, item in enumerate(items):
        item_path = (*key_path, index) if isinstance(value, list) else key_path
        if not isinstance(item, str) or item not in known:
            close = difflib.get_close_matches(str(item), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise doc.error(item_path, f"unknown category {item!r}{hint}: {path.name} has {', '.join(known)}")
        if item in out:
            raise doc.error(item_path, f"category {item!r} is listed twice: give each category once")
        out.append(item)
    return out


def _read_prompt_file(doc: LocatedYaml, key_path: KeyPath, path: Path) -> tuple[tuple[Prompt, ...], tuple[str, ...]]:
    """The prompts of a file and, where its rows have a ``category``, each prompt's category (else ())."""
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
    labels = [item.get("category") if isinstance(item, dict) else None for item in items]
    if all(label is None for label in labels):
        return prompts, ()
    for index, label in enumerate(labels):
        if not isinstance(label, str) or not label:
            raise doc.error(
                key_path,
                f"prompt {index} in {path.name}: expected a `category` (text), got {label!r}: in a file with "
                "categories every row has one",
            )
    return prompts, tuple(str(label) for label in labels)


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
