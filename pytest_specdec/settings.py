"""The plugin's settings: read once from the command line, the environment and the ini file, then immutable.

Precedence: command line > environment > ini file > default. The one environment variable is declared here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ENV_MACHINE_CLASS = "SPECDEC_MACHINE_CLASS"  # pin the machine class (e.g. in CI): names the baseline file
SUITES_FOLDER = "bench_suites"
SUITE_SUFFIXES = (".yaml", ".yml")
CHECKOUT = Path(__file__).resolve().parent.parent  # a development checkout holds bench_suites/ next to the plugin


@dataclass(frozen=True)
class Settings:
    suites: tuple[Path, ...]  # resolved suite files, in command-line order
    baselines_dir: Path
    machine_class: str
    machine_class_source: str  # "--specdec-machine-class", "SPECDEC_MACHINE_CLASS" or "detected"
    update_baselines: bool
    strict: bool
    allow_download: bool
    report_json: Path | None
    report_csv: Path | None
    report_html: Path | None
    report_md: Path | None
    history: tuple[str, ...]  # globs of earlier runs for the HTML report, relative to the invocation folder
    compare: str | None  # a saved pytest-benchmark run (number or path) that gates this run instead of baselines
    benchmark_storage: str  # pytest-benchmark's --benchmark-storage, where --specdec-compare NNNN looks

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        from pytest_specdec.machine import detect_machine_class, slug  # imports torch: only when a suite runs

        invocation = config.invocation_params.dir
        root = config.rootpath
        option_class = config.getoption("specdec_machine_class")
        env_class = os.environ.get(ENV_MACHINE_CLASS, "").strip()
        if option_class:
            machine_class, source = slug(option_class), "--specdec-machine-class"
        elif env_class:
            machine_class, source = slug(env_class), ENV_MACHINE_CLASS
        else:
            machine_class, source = detect_machine_class(), "detected"
        baselines = config.getoption("specdec_baselines_dir") or config.getini("specdec_baselines_dir") or "baselines"
        return cls(
            suites=tuple(
                dict.fromkeys(resolve_suite(name, invocation, root) for name in config.getoption("specdec_suite"))
            ),
            baselines_dir=_under(root if not config.getoption("specdec_baselines_dir") else invocation, baselines),
            machine_class=machine_class,
            machine_class_source=source,
            update_baselines=bool(config.getoption("specdec_update_baselines")),
            strict=bool(config.getoption("specdec_strict")),
            allow_download=bool(config.getoption("specdec_allow_download")),
            report_json=_optional_path(invocation, config.getoption("specdec_report_json")),
            report_csv=_optional_path(invocation, config.getoption("specdec_report_csv")),
            report_html=_optional_path(invocation, config.getoption("specdec_report_html")),
            report_md=_optional_path(invocation, config.getoption("specdec_report_md")),
            history=tuple(config.getoption("specdec_history") or ()),
            compare=config.getoption("specdec_compare"),
            benchmark_storage=str(config.getoption("benchmark_storage", None) or "file://./.benchmarks"),
        )


def _under(base: Path, value: str | os.PathLike[str]) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _optional_path(base: Path, value: str | None) -> Path | None:
    return _under(base, value) if value else None


def suite_folders(invocation: Path, root: Path) -> list[Path]:
    """Where ``--specdec-suite NAME`` looks for ``NAME.yaml``, in order."""
    return list(dict.fromkeys(folder / SUITES_FOLDER for folder in (invocation, root, CHECKOUT)))


def available_suites(invocation: Path, root: Path) -> list[str]:
    names = {p.stem for folder in suite_folders(invocation, root) if folder.is_dir() for p in folder.glob("*.y*ml")}
    return sorted(names)


def resolve_suite(name: str, invocation: Path, root: Path) -> Path:
    """A suite name (``cpu-smoke`` -> ``bench_suites/cpu-smoke.yaml``) or a path to a YAML file."""
    looks_like_path = name.endswith(SUITE_SUFFIXES) or os.sep in name or "/" in name
    if looks_like_path:
        path = _under(invocation, name)
        if path.is_file():
            return path.resolve()
        raise pytest.UsageError(f"--specdec-suite {name}: no such file {path}")
    for folder in suite_folders(invocation, root):
        for suffix in SUITE_SUFFIXES:
            path = folder / f"{name}{suffix}"
            if path.is_file():
                return path.resolve()
    known = ", ".join(available_suites(invocation, root)) or "none"
    looked = ", ".join(str(f) for f in suite_folders(invocation, root))
    raise pytest.UsageError(
        f"--specdec-suite {name}: no suite named {name!r} (looked in {looked}); known suites: {known}; "
        "or give a path to a .yaml file"
    )
