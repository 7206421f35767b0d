"""Baseline files: ``<baselines dir>/<suite>/<machine class>.json``, read at the start of a run and rewritten
atomically by ``--specdec-update-baselines``.

Layout (schema version 1)::

    {"schema_version": 1, "suite": "cpu-smoke", "machine_class": "cpu-x86_64-2c",
     "machine": {...}, "software": {"python": ..., "torch": ..., ...}, "commit": {"id": ..., "dirty": ...},
     "updated_at": "2025-01-01T00:00:00+00:00",
     "cases": {"tiny-code[k=4,cpu,fp32,bs=1]": {<CaseRecord>}, ...}}

File-level machine, software and commit describe the last update; each case keeps its own environment and commit,
so an update of some cases leaves the others' provenance intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_specdec.measurement import CaseRecord

SCHEMA_VERSION = 1
REQUIRED_CASE_FIELDS = ("digest", "tokens_per_forward", "tokens_per_second", "output_hash")


class BaselineError(Exception):
    """A baseline file exists but cannot be used: the message names it and what is wrong."""


def baseline_path(folder: Path, suite: str, machine_class: str) -> Path:
    return folder / suite / f"{machine_class}.json"


@dataclass(frozen=True)
class BaselineUpdate:
    path: Path
    written: tuple[str, ...]  # case ids recorded from this run
    kept: tuple[str, ...]  # case ids of the file this run did not touch
    refused: tuple[str, ...]  # case ids that failed: never recorded


def load_baselines(path: Path) -> dict[str, CaseRecord]:
    """The recorded cases of ``path`` ({} when the file does not exist)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BaselineError(f"baseline file {path} cannot be read: {error}") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise BaselineError(
            f"baseline file {path} has schema_version {version!r}, this plugin reads {SCHEMA_VERSION}: "
            "record it again with --specdec-update-baselines"
        )
    cases = data.get("cases")
    if not isinstance(cases, dict):
        raise BaselineError(f"baseline file {path}: expected `cases` to be a mapping of case id to metrics")
    records = {}
    for case_id, entry in cases.items():
        missing = [f for f in REQUIRED_CASE_FIELDS if not isinstance(entry, dict) or entry.get(f) is None]
        if missing:
            raise BaselineError(f"baseline file {path}: case {case_id!r} lacks {', '.join(missing)}")
        records[case_id] = CaseRecord.from_dict(entry)
    return records


def write_baselines(
    path: Path,
    *,
    suite: str,
    machine_class: str,
    records: dict[str, CaseRecord],
    refused: list[str],
    header: dict[str, Any],
) -> BaselineUpdate:
    """Merge ``records`` into ``path`` (other cases kept) and replace the file atomically."""
    existing: dict[str, Any] = {}
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8")).get("cases", {}) or {}
        except (OSError, ValueError, AttributeError):
            existing = {}  # an unreadable file is replaced whole
    cases = dict(existing)
    cases.update({case_id: record.to_dict() for case_id, record in records.items()})
    document = {
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "machine_class": machine_class,
        **header,
        "cases": dict(sorted(cases.items())),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
        os.chmod(temporary, 0o644)  # mkstemp creates it private; a baseline is an ordinary tracked file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return BaselineUpdate(
        path=path,
        written=tuple(sorted(records)),
        kept=tuple(sorted(set(existing) - set(records))),
        refused=tuple(sorted(refused)),
    )
