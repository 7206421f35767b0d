"""YAML with line numbers: the document as plain Python values, and the line of every key and list item."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pytest_specdec.errors import SuiteError

KeyPath = tuple[str | int, ...]  # ("cases", 0, "k") is cases[0].k
MAX_ALIAS_NODES = 50_000  # nodes that YAML aliases may add to a suite in all (a "billion laughs" file adds 10**9)


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
    """Parse ``path``; a syntax error, a duplicate key or an alias bomb raises :class:`SuiteError` with its line.

    A suite is untrusted input, so the document is checked as written (the node graph, in which an alias is the
    anchored node itself) before any Python value is built: aliases may add at most ``MAX_ALIAS_NODES`` nodes in
    all, and may not contain themselves.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SuiteError(path, f"cannot read the suite file: {error}") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        lines: dict[KeyPath, int] = {}
        if node is not None:
            _AliasBudget(path, loader).check(node)
            _record_lines(path, loader, node, (), lines, set())
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = " ".join(str(p) for p in (error.context, error.problem) if p)
        raise SuiteError(path, f"YAML syntax error: {problem}", line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as error:
        raise SuiteError(path, f"YAML syntax error: {error}") from None
    except RecursionError:
        raise SuiteError(path, "the YAML nests too deeply: a suite needs a few levels of nesting") from None
    finally:
        loader.dispose()
    return LocatedYaml(path=path, data=data, lines=lines)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also remembers where each alias is written (its node carries the anchor's place)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.alias_lines: dict[tuple[int, int], int] = {}  # (id(list node), index) -> 1-based line of `*a`

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent) and isinstance(index, int) and parent is not None:
            self.alias_lines[(id(parent), index)] = self.peek_event().start_mark.line + 1
        return super().compose_node(parent, index)

    def children(self, node: yaml.Node) -> list[tuple[str | int | None, yaml.Node, int]]:
        """``(key, child, line)`` of a collection node in written order (a mapping's key nodes with key None);
        ``line`` is where the child is written, also for an alias (a mapping value's is its key's line)."""
        out: list[tuple[str | int | None, yaml.Node, int]] = []
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                out += [(None, key_node, line), (key, value_node, line)]
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                out.append((index, item, self.alias_lines.get((id(node), index), item.start_mark.line + 1)))
        return out


class _AliasBudget:
    """Counts the nodes that aliases add when the document is expanded (each use of ``*a`` adds every node under
    ``&a``), from the node graph and with memoised sizes, so a "billion laughs" file costs microseconds."""

    def __init__(self, path: Path, loader: _Loader) -> None:
        self.path = path
        self.loader = loader
        self.sizes: dict[int, int] = {}  # id(node) -> nodes in its expansion, aliases followed
        self.expanding: set[int] = set()  # nodes whose size is being computed (a cycle returns to one)
        self.added = 0  # nodes added by the aliases met so far, in written order

    def check(self, root: yaml.Node) -> None:
        seen: set[int] = set()
        stack: list[tuple[yaml.Node, KeyPath, int]] = [(root, (), root.start_mark.line + 1)]
        while stack:  # written order; a node met again is an alias, which adds its expansion
            node, key_path, line = stack.pop()
            if id(node) in seen:
                size = self.size(node, key_path, line)
                self.added += size
                if self.added > MAX_ALIAS_NODES:
                    raise SuiteError(
                        self.path,
                        f"YAML aliases expand the suite by more than {MAX_ALIAS_NODES:,} values (this one by "
                        f"{size:,}; a 'billion laughs' file?): write the values out or use fewer aliases",
                        key=key_name(key_path) or None,
                        line=line,
                    )
                continue
            seen.add(id(node))
            items = []
            for key, child, child_line in self.loader.children(node):
                child_path = key_path if key is None or key == "<<" else (*key_path, key)
                items.append((child, child_path, child_line))
            stack.extend(reversed(items))

    def size(self, node: yaml.Node, key_path: KeyPath, line: int) -> int:
        if id(node) in self.sizes:
            return self.sizes[id(node)]
        if id(node) in self.expanding:
            raise SuiteError(
                self.path,
                "a YAML alias refers to a value that contains it (a recursive structure): write the value out",
                key=key_name(key_path) or None,
                line=line,
            )
        self.expanding.add(id(node))
        total = 1 + sum(self.size(child, key_path, line) for _, child, _ in self.loader.children(node))
        self.expanding.discard(id(node))
        self.sizes[id(node)] = total
        return total


def _record_lines(
    path: Path, loader: _Loader, node: yaml.Node, key_path: KeyPath, lines: dict[KeyPath, int], seen: set[int]
) -> None:
    """Record the line of every key and list item as written; an alias (a node met again) is not followed, and the
    keys a merge (``<<: *a``) brings in have no line of their own here (they take their mapping's). Only a key
    written twice in one mapping is a duplicate: a merged key that the mapping overrides is not."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        written: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in written:
                raise SuiteError(
                    path,
                    f"duplicate key {key!r} (first written on line {written[key]}): give each key once",
                    key=key_name((*key_path, key)),
                    line=line,
                )
            written[key] = line
            lines[(*key_path, key)] = line
            _record_lines(path, loader, value_node, (*key_path, key), lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item, line in loader.children(node):
            assert isinstance(index, int)
            lines[(*key_path, index)] = line
            _record_lines(path, loader, item, (*key_path, index), lines, seen)
