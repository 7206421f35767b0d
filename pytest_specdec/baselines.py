"""Baseline files: ``<baselines dir>/<suite>/<machine class>.json``, read at the start of a run and rewritten
atomically by ``--specdec-update-baselines``.

Layout (schema version 1)::

    {"schema_version": 1, "suite": "cpu-smoke", "machine_class": "cpu-x86_64-2c",
     "machine": {...}, "software": {"python": ..., "torch": ..., ...}, "commit": {"id": ..., "dirty": ...},
     "updated_at": "2025-01-01T00:00:00+00:00",
     "cases": {"tiny-code[k=4,cpu,fp32,bs=1]": {<CaseRecord>}, ...}}

File-level machine, software and commit describe the last update; each case keeps its own environment and commit,
so an update of some cases leaves the others' provenance intact.

Repeated updates pool the speedup: an update at the same clean commit, on the same environment, of a case whose
definition did not change adds its speedup to the entry's ``speedup_samples`` (the last ``SPEEDUP_SAMPLES``), and
the entry's ``speedup`` is their median. One run's speedup carries a few percent of noise of its own; the median of
several runs does not pass it on to every later comparison. Any other update starts the samples over.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pytest_specdec.measurement import CaseRecord

SCHEMA_VERSION = 1
REQUIRED_CASE_FIELDS = ("digest", "tokens_per_forward", "tokens_per_second", "output_hash")
NUMBER_FIELDS = {  # gated or shown numbers: finite when present; the flag says whether null is allowed
    "acceptance_rate": True,  # null for the autoregressive case
    "tokens_per_forward": False,
    "tokens_per_second": False,
    "speedup": True,  # null for the autoregressive case
    "new_tokens": True,
    "peak_memory_bytes": True,
}
TEXT_FIELDS = ("digest", "output_hash")
SPEEDUP_SAMPLES = 5  # runs at one commit whose median speedup an entry keeps


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
    backup: Path | None = None  # where the unreadable file this update replaced was kept
    pooled: tuple[str, ...] = ()  # case ids whose speedup is now the median of several runs at this commit


def unwritable(path: Path) -> str | None:
    """Why the baseline file ``path`` cannot be written (None when it can): checked before a run that updates it,
    so that a wrong folder fails at once instead of after every case ran."""
    if path.exists() and not path.is_file():
        return f"{path} exists and is not a file"
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folders that do not exist yet are created by the update
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return f"the folder {existing} is not writable ({error.strerror or error})"
    return None


def load_baselines(path: Path, machine_class: str | None = None) -> dict[str, CaseRecord]:
    """The recorded cases of ``path`` ({} when the file does not exist), validated: a hand-edited value that is not
    a finite number, or a file of another machine class than ``machine_class``, is a :class:`BaselineError`."""
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
    recorded_class = data.get("machine_class")
    if machine_class is not None and recorded_class is not None and recorded_class != machine_class:
        raise BaselineError(
            f"baseline file {path}: machine_class is {recorded_class!r}, but this run's machine class is "
            f"{machine_class!r}: a baseline of another machine does not gate this one; move the file to "
            f"{path.with_name(f'{recorded_class}.json')} or record this machine's with --specdec-update-baselines"
        )
    cases = data.get("cases")
    if not isinstance(cases, dict):
        raise BaselineError(f"baseline file {path}: expected `cases` to be a mapping of case id to metrics")
    records = {}
    for case_id, entry in cases.items():
        missing = [f for f in REQUIRED_CASE_FIELDS if not isinstance(entry, dict) or entry.get(f) is None]
        if missing:
            raise BaselineError(f"baseline file {path}: case {case_id!r} lacks {', '.join(missing)}")
        _validate(path, case_id, entry, machine_class)
        records[case_id] = CaseRecord.from_dict(entry)
    return records


def _validate(path: Path, case_id: str, entry: dict[str, Any], machine_class: str | None) -> None:
    fix = "correct it or record the case again with --specdec-update-baselines"
    for key, nullable in NUMBER_FIELDS.items():
        value = entry.get(key)
        if value is None and nullable:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(float(value or 0)):
            raise BaselineError(
                f"baseline file {path}: case {case_id!r}: {key} must be a finite number"
                f"{' or null' if nullable else ''}, got {json.dumps(value)}; {fix}"
            )
    for key in TEXT_FIELDS:
        if not isinstance(entry.get(key), str):
            raise BaselineError(
                f"baseline file {path}: case {case_id!r}: {key} must be text, got {json.dumps(entry.get(key))}; {fix}"
            )
    environment = entry.get("environment")
    if environment is not None and not isinstance(environment, dict):
        raise BaselineError(f"baseline file {path}: case {case_id!r}: environment must be a mapping; {fix}")
    recorded_class = (environment or {}).get("machine_class")
    if machine_class is not None and recorded_class and recorded_class != machine_class:
        raise BaselineError(
            f"baseline file {path}: case {case_id!r}: environment.machine_class is {recorded_class!r}, not this "
            f"run's {machine_class!r}: a baseline of another machine does not gate this one; {fix}"
        )


def write_baselines(
    path: Path,
    *,
    suite: str,
    machine_class: str,
    records: dict[str, CaseRecord],
    refused: list[str],
    header: dict[str, Any],
) -> BaselineUpdate:
    """Merge ``records`` into ``path`` (other cases kept) and replace the file atomically. A file that cannot be
    read (or fails validation) is copied to ``<file>.corrupt-<UTC time>`` first and then replaced whole."""
    existing: dict[str, Any] = {}
    backup: Path | None = None
    if path.is_file():
        try:
            load_baselines(path, machine_class)
            existing = json.loads(path.read_text(encoding="utf-8"))["cases"]
        except (BaselineError, OSError, ValueError):
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            backup = path.with_name(f"{path.name}.corrupt-{stamp}")
            shutil.copy2(path, backup)
    clean = bool(header.get("commit", {}).get("id")) and not header.get("commit", {}).get("dirty", True)
    pooled = {case_id: _pooled(record, existing.get(case_id), clean) for case_id, record in records.items()}
    cases = dict(existing)
    cases.update({case_id: record.to_dict() for case_id, record in pooled.items()})
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
        backup=backup,
        pooled=tuple(sorted(case_id for case_id, record in pooled.items() if len(record.speedup_samples) > 1)),
    )


def _pooled(record: CaseRecord, entry: dict[str, Any] | None, clean: bool) -> CaseRecord:
    """``record`` with its speedup pooled with ``entry``'s samples where both come from the same clean commit, the
    same case definition and the same environment (else a sample of its own)."""
    if record.speedup is None:
        return record
    samples: tuple[float, ...] = (record.speedup,)
    old = CaseRecord.from_dict(entry) if entry is not None else None
    same = old is not None and (old.commit, old.digest, old.environment) == (
        record.commit,
        record.digest,
        record.environment,
    )
    if clean and same and old is not None and old.speedup is not None:
        samples = (old.speedup_samples or (old.speedup,)) + samples
    samples = samples[-SPEEDUP_SAMPLES:]
    return replace(record, speedup=statistics.median(samples), speedup_samples=samples)
