"""Earlier runs read back: pytest-benchmark's saved runs (``--benchmark-autosave``, ``--benchmark-save``,
``--benchmark-json``), whose benchmarks carry the plugin's ``extra_info``, and ``--specdec-report-json`` files.

They feed the HTML report's history (``--specdec-history GLOB``) and ``--specdec-compare REF``, which gates a run
against one saved pytest-benchmark run with the rules of the baselines (``gating.py``).
"""

from __future__ import annotations

import glob
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_specdec.machine import Environment
from pytest_specdec.measurement import CaseRecord

NUMBERED = re.compile(r"^(\d{4})_")  # pytest-benchmark names saved runs NNNN_<name>.json
GATED_NUMBERS = {  # extra_info numbers --specdec-compare gates; the flag says whether null is allowed
    "acceptance_rate": True,  # null for the autoregressive case
    "tokens_per_forward": False,
    "tokens_per_second": False,
    "speedup": True,  # null for the autoregressive case
}
HISTORY_RUNS = 30  # the HTML history shows at most this many earlier runs, the most recent


class SavedRunError(Exception):
    """An earlier run cannot be used: the message names the file (or what was looked for) and what is wrong."""


@dataclass(frozen=True)
class SavedRun:
    path: Path
    label: str  # "0001" for pytest-benchmark's numbered saves, else the file's stem
    created_at: str | None  # ISO time of the run, where the file records it
    commit: str | None
    machine_info: Mapping[str, Any]  # pytest-benchmark's machine_info (with the plugin's under "specdec")
    cases: Mapping[tuple[str, str], Mapping[str, Any]]  # (suite, case id) -> its extra_info or report row
    from_benchmark: bool  # a pytest-benchmark file; else a --specdec-report-json file

    def metric(self, suite: str, case: str, name: str) -> Any:
        return self.cases.get((suite, case), {}).get(name)

    def describe(self) -> str:
        """When, at which commit and on what it ran: ``"2026-12-01T10:00:00, commit 0123456789ab, torch 2.13.0,
        transformers 5.24.0, NVIDIA H200 (driver 570.86.15, CUDA 12.8)"`` (what the file records)."""
        parts = [self.created_at or "time unknown", f"commit {(self.commit or '?')[:12]}"]
        info = self.machine_info.get("specdec")
        if isinstance(info, dict):
            parts += [f"{name} {info[name]}" for name in ("torch", "transformers") if info.get(name)]
            gpus = ", ".join(dict.fromkeys(info.get("gpus") or []))
            details = ", ".join(
                f"{label} {info[key]}" for label, key in (("driver", "gpu_driver"), ("CUDA", "cuda")) if info.get(key)
            )
            device = gpus or f"{info.get('cpu', '?')} ({info.get('cpu_capability', '?')})"
            parts.append(f"{device} ({details})" if gpus and details else device)
        return ", ".join(parts)


def read_run(path: Path) -> SavedRun:
    """A pytest-benchmark JSON file or a ``--specdec-report-json`` file; anything else is a :class:`SavedRunError`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SavedRunError(f"{path} cannot be read: {error}") from None
    match = NUMBERED.match(path.name)
    label = match.group(1) if match else path.stem
    if isinstance(data, dict) and isinstance(data.get("benchmarks"), list):
        cases = {
            (str(info["suite"]), str(info["case"])): info
            for info in (b.get("extra_info") for b in data["benchmarks"] if isinstance(b, dict))
            if isinstance(info, dict) and "suite" in info and "case" in info
        }
        commit = data.get("commit_info") or {}
        return SavedRun(
            path=path,
            label=label,
            created_at=data.get("datetime"),
            commit=commit.get("id") if isinstance(commit, dict) else None,
            machine_info=data.get("machine_info") or {},
            cases=cases,
            from_benchmark=True,
        )
    if isinstance(data, dict) and isinstance(data.get("suites"), dict):
        rows = [row for rows in data["suites"].values() if isinstance(rows, list) for row in rows]
        commit = data.get("commit") or {}
        return SavedRun(
            path=path,
            label=label,
            created_at=data.get("created_at"),
            commit=commit.get("id") if isinstance(commit, dict) else None,
            machine_info={},
            cases={(str(r["suite"]), str(r["case"])): r for r in rows if isinstance(r, dict) and "case" in r},
            from_benchmark=False,
        )
    raise SavedRunError(
        f"{path} is neither a pytest-benchmark run (a JSON object with `benchmarks`) nor a --specdec-report-json "
        "file (one with `suites`)"
    )


def read_history(patterns: Sequence[str], base: Path) -> list[SavedRun]:
    """The earlier runs that files matching ``patterns`` (globs, ``**`` included, relative to ``base``) hold, oldest
    first (by the time they record, else by path); files that hold no suite case (other benchmarks) are left out,
    and only the :data:`HISTORY_RUNS` most recent are kept."""
    files: dict[Path, None] = {}
    for pattern in patterns:
        absolute = pattern if Path(pattern).expanduser().is_absolute() else str(base / pattern)
        for name in sorted(glob.glob(str(Path(absolute).expanduser()), recursive=True)):
            if Path(name).is_file():
                files[Path(name).resolve()] = None
    runs = [run for run in (read_run(path) for path in files) if run.cases]
    runs.sort(key=lambda run: (run.created_at or "", str(run.path)))
    return runs[-HISTORY_RUNS:]


def storage_folder(option: str, base: Path) -> Path:
    """pytest-benchmark's ``--benchmark-storage`` value (``file://./.benchmarks`` or a path) as a folder."""
    scheme, separator, rest = option.partition("://")
    if separator and scheme != "file":
        raise SavedRunError(
            f"--benchmark-storage {option}: --specdec-compare reads saved runs from a folder (file://PATH), not "
            f"from {scheme}; give --specdec-compare the path of a saved JSON file instead"
        )
    path = Path(rest if separator else option).expanduser()
    return path if path.is_absolute() else base / path


def find_saved_run(ref: str, storage: Path, base: Path, machine_id: str | None = None) -> Path:
    """``--specdec-compare REF``: a saved run's number (``0001``, or ``1``), looked up in ``storage`` as
    pytest-benchmark's ``--benchmark-compare`` does (this machine's folder first), or the path of a JSON file."""
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else base / path
    if not ref.isdigit() or path.is_file():
        if path.is_file():
            return path
        raise SavedRunError(f"--specdec-compare {ref}: no such file {path}; give a saved run's number or a path")
    number = f"{int(ref):04d}"
    found = sorted(storage.glob(f"*/{number}_*.json")) + sorted(storage.glob(f"{number}_*.json"))
    mine = [p for p in found if machine_id is not None and p.parent.name == machine_id]
    if len(mine) == 1 or len(found) == 1:
        return (mine or found)[0]
    if found:
        listed = ", ".join(str(p) for p in found)
        raise SavedRunError(
            f"--specdec-compare {ref}: several saved runs are numbered {number} ({listed}); give a path"
        )
    numbered = "[0-9][0-9][0-9][0-9]_*.json"
    saved = sorted(storage.glob(f"*/{numbered}")) + sorted(storage.glob(numbered))
    listed = ", ".join(str(p.relative_to(storage)) for p in saved[-20:]) if saved else "none"
    raise SavedRunError(
        f"--specdec-compare {ref}: no saved run numbered {number} in {storage} (--benchmark-storage); saved runs: "
        f"{listed}; save one with --benchmark-autosave"
    )


def compared_records(run: SavedRun) -> dict[tuple[str, str], CaseRecord]:
    """The saved run's cases as baseline records for ``gating.compare``: the metrics from each benchmark's
    ``extra_info``, the environment from it and the file's ``machine_info``. A run saved before suite digests were
    saved has an empty ``digest`` (the caller takes the entry as unchanged)."""
    if not run.from_benchmark:
        raise SavedRunError(
            f"{run.path} is a --specdec-report-json file; --specdec-compare gates against a pytest-benchmark run "
            "(saved with --benchmark-autosave or --benchmark-json)"
        )
    if not run.cases:
        raise SavedRunError(
            f"{run.path} holds no specdec case: none of its benchmarks carries the plugin's extra_info (suite, case, "
            "speedup, ...); compare against a run saved by pytest --specdec-suite ... --benchmark-autosave"
        )
    software = run.machine_info.get("specdec") or {}
    software = software if isinstance(software, dict) else {}
    records = {}
    for (suite, case), info in run.cases.items():
        _validate(run.path, case, info)
        records[(suite, case)] = CaseRecord(
            digest=str(info.get("digest") or ""),
            greedy=not info.get("temperature"),
            acceptance_rate=info.get("acceptance_rate"),
            tokens_per_forward=float(info["tokens_per_forward"]),
            tokens_per_second=float(info["tokens_per_second"]),
            speedup=info.get("speedup"),
            output_hash=str(info["output_hash"]),
            new_tokens=0,
            peak_memory_bytes=info.get("peak_memory_bytes"),
            environment=Environment(
                machine_class=str(info.get("machine_class") or ""),
                device_model=str(info.get("device_model") or ""),
                python=str(run.machine_info.get("python_version") or ""),
                torch=str(software.get("torch") or ""),  # unknown: gated as other software
                transformers=str(software.get("transformers") or ""),
            ),
            commit=run.commit,
            recorded_at=run.created_at,
        )
    return records


def _validate(path: Path, case: str, info: Mapping[str, Any]) -> None:
    for key, nullable in GATED_NUMBERS.items():
        value = info.get(key)
        if value is None and nullable:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise SavedRunError(
                f"{path}: case {case!r}: extra_info.{key} must be a finite number{' or null' if nullable else ''}, "
                f"got {json.dumps(value)}; compare against another saved run"
            )
    if not isinstance(info.get("output_hash"), str):
        raise SavedRunError(
            f"{path}: case {case!r}: extra_info.output_hash must be text, got {json.dumps(info.get('output_hash'))}"
        )


def machine_label(info: Mapping[str, Any]) -> str:
    """One line naming the machine and software of a saved run, from its ``machine_info["specdec"]``:
    ``NVIDIA H200 (CUDA 13.0, driver 580.159.04), torch 2.11.0, transformers 5.17.0`` or
    ``AMD EPYC (AVX512, 2 cores), torch 2.13.0+cpu, transformers 5.24.0`` ("" for a run saved without it)."""
    if not info:
        return ""
    gpus = info.get("gpus") or []
    if gpus:
        names = ", ".join(dict.fromkeys(str(g.get("name", g)) if isinstance(g, Mapping) else str(g) for g in gpus))
        shown = (("CUDA", "cuda"), ("driver", "gpu_driver"))
        details = ", ".join(f"{name} {info[key]}" for name, key in shown if info.get(key))
        device = f"{names} ({details})" if details else names
    else:
        device = f"{info.get('cpu', '?')} ({info.get('cpu_capability', '?')}, {info.get('cores', '?')} cores)"
    software = ", ".join(f"{name} {info[name]}" for name in ("torch", "transformers") if info.get(name))
    return ", ".join(part for part in (device, software) if part)


def label_groups(
    groups: list[tuple[str | None, list[dict[str, Any]]]],
) -> list[tuple[str | None, list[dict[str, Any]]]]:
    """pytest-benchmark's groups of saved benchmarks (each with the ``path`` of its file), each name followed by the
    machine and software of the runs in it (``| 0001, 0002: AMD EPYC (...), torch ...``), so that
    ``pytest-benchmark compare`` shows them. Benchmarks of the live run (no ``path``) are left as they are."""
    labels: dict[str, str] = {}
    for bench in (b for _, benches in groups for b in benches if b.get("path")):
        path = str(bench["path"])
        if path not in labels:
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            labels[path] = machine_label((data.get("machine_info") or {}).get("specdec") or {})
    labelled = []
    for name, benches in groups:
        runs: dict[str, list[str]] = {}
        for bench in benches:
            label = labels.get(str(bench.get("path")), "")
            if label:
                runs.setdefault(label, []).append(Path(str(bench["path"])).name.split("_")[0])
        if runs:
            machines = "; ".join(f"{', '.join(dict.fromkeys(ids))}: {label}" for label, ids in runs.items())
            name = f"{name or ''} | {machines}".lstrip(" |")
        labelled.append((name, benches))
    return labelled
