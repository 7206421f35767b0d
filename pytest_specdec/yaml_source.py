"""YAML with line numbers: the document as plain Python values, and the line of every key and list item."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pytest_specdec.errors import SuiteError

KeyPath = tuple[str | int, ...]  # ("cases", 0, "k") is cases[0].k


def key_name(key_path: Sequence[str | int]) -> str:
    """``("cases", 0, "k")`` -> ``"cases[0].k"``."""
    out = ""
    for part in key_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class LocatedYaml:
    """A parsed YAML document that can say on which line a key (or list item) was written."""

    path: Path
    data: Any
    lines: dict[KeyPath, int]  # 1-based line of each key / list item

    def line(self, key_path: Sequence[str | int]) -> int | None:
        """Line of ``key_path``, else of its closest written ancestor (a defaulted key has no line of its own)."""
        parts = tuple(key_path)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return None

    def error(self, key_path: Sequence[str | int], message: str) -> SuiteError:
        return SuiteError(self.path, message, key=key_name(key_path) or None, line=self.line(key_path))


def load_yaml(path: Path) -> LocatedYaml:
    """Parse ``path``; a syntax error or a duplicate key raises :class:`SuiteError` with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SuiteError(path, f"cannot read the suite file: {error}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = " ".join(str(p) for p in (error.context, error.problem) if p)
        raise SuiteError(path, f"YAML syntax error: {problem}", line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as error:
        raise SuiteError(path, f"YAML syntax error: {error}") from None
    finally:
        loader.dispose()
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _record_lines(path, node, (), lines)
    return LocatedYaml(path=path, data=data, lines=lines)


def _record_lines(path: Path, node: yaml.Node, key_path: KeyPath, lines: dict[KeyPath, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":  # merge keys have no own line
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in seen:
                raise SuiteError(
                    path,
                    f"duplicate key {key!r} (first written on line {seen[key]}): give each key once",
                    key=key_name((*key_path, key)),
                    line=line,
                )
            seen[key] = line
            lines[(*key_path, key)] = line
            _record_lines(path, value_node, (*key_path, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*key_path, index)] = item.start_mark.line + 1
            _record_lines(path, item, (*key_path, index), lines)
