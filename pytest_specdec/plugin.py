"""pytest hooks and options of the specdec plugin (registered through the ``pytest11`` entry point).

``pytest --specdec-suite NAME`` collects ``bench_suites/NAME.yaml`` (or a path) into benchmark cases, runs each
through pytest-benchmark's fixture, gates it against ``baselines/NAME/<machine class>.json`` and prints a summary
table per suite. Without ``--specdec-suite`` the plugin only registers its markers.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Generator
from pathlib import Path
from types import FrameType

import pytest

from pytest_specdec import summary
from pytest_specdec.cases import Case
from pytest_specdec.collection import SESSION_KEY, CaseItem, SuiteFile
from pytest_specdec.gating import Status
from pytest_specdec.machine import machine_info, software
from pytest_specdec.session import BenchSession
from pytest_specdec.settings import ENV_MACHINE_CLASS, Settings

MARKERS = {
    "gpu": "needs a CUDA GPU (deselect with -m 'not gpu')",
    "mps": "needs Apple MPS (deselect with -m 'not mps')",
    "slow": "takes long (deselect with -m 'not slow')",
    "specdec": "a benchmark case of a specdec suite (select with -m specdec)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("specdec", "specdec benchmark suites")
    group.addoption(
        "--specdec-suite",
        action="append",
        default=[],
        metavar="NAME",
        help="run benchmark suite NAME (bench_suites/NAME.yaml) or a suite .yaml path; may be given more than once",
    )
    group.addoption(
        "--specdec-update-baselines",
        action="store_true",
        help="rewrite the baselines from this run (cases that failed are not recorded; other cases are kept)",
    )
    group.addoption(
        "--specdec-strict",
        action="store_true",
        help="fail a case that has no baseline (or a stale one) instead of reporting it",
    )
    group.addoption(
        "--specdec-baselines-dir",
        metavar="DIR",
        default=None,
        help="folder of baseline files DIR/<suite>/<machine class>.json (default: baselines/ in the rootdir)",
    )
    group.addoption(
        "--specdec-machine-class",
        metavar="NAME",
        default=None,
        help=f"machine class that names the baseline file (default: ${ENV_MACHINE_CLASS}, else detected)",
    )
    group.addoption(
        "--specdec-allow-download",
        action="store_true",
        help="let hub models download (by default they are read from the local Hugging Face cache only)",
    )
    group.addoption("--specdec-report-json", metavar="PATH", default=None, help="also write the summary as JSON")
    group.addoption("--specdec-report-csv", metavar="PATH", default=None, help="also write the summary as CSV")
    parser.addini("specdec_baselines_dir", "folder of baseline files, relative to the rootdir", default="baselines")


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    if not config.getoption("specdec_suite", None):
        return
    settings = Settings.from_config(config)
    names: dict[str, Path] = {}
    for path in settings.suites:
        if path.stem in names:
            raise pytest.UsageError(f"two suites are named {path.stem!r}: {names[path.stem]} and {path}")
        names[path.stem] = path
    config.stash[SESSION_KEY] = BenchSession(settings, config.rootpath)
    _interrupt_on_sigterm(config)
    suite_args = [str(p) for p in settings.suites]
    if config.args_source is pytest.Config.ArgsSource.ARGS:
        config.args.extend(a for a in suite_args if a not in config.args)  # explicit paths run too
    else:
        config.args[:] = suite_args  # no paths given: run the suites only, not the testpaths


def _interrupt_on_sigterm(config: pytest.Config) -> None:
    """Treat SIGTERM (``timeout``, a CI runner's cancel, ``kill``) like Ctrl-C: pytest then stops after the case in
    hand and still finishes the session, so the cases already measured reach the baselines (with
    ``--specdec-update-baselines``), the summary table and the JSON/CSV reports."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM takes the default way out
        raise KeyboardInterrupt(f"SIGTERM (signal {signum})")

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(restore)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return None
    s = session.settings
    lines = [
        f"specdec suites: {', '.join(p.stem for p in s.suites)}; "
        f"machine class {s.machine_class} ({s.machine_class_source})",
        f"specdec baselines: {s.baselines_dir}"
        + ("; updating" if s.update_baselines else "")
        + ("; strict" if s.strict else ""),
        "specdec hub models: "
        + ("may download" if s.allow_download else "local cache only (--specdec-allow-download)"),
    ]
    return lines


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> SuiteFile | None:
    session = parent.config.stash.get(SESSION_KEY, None)
    if session is not None and file_path.resolve() in session.settings.suites:
        return SuiteFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(trylast=True)  # after shufflers (pytest-randomly runs first)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move each autoregressive case just before the first speculative case measured against it."""
    slots = [i for i, item in enumerate(items) if isinstance(item, CaseItem)]
    cases: list[Case] = [items[i].case for i in slots]  # type: ignore[attr-defined]
    anchor: dict[tuple[str, str], int] = {}  # reference case -> first position of it or a case that needs it
    for position, case in enumerate(cases):
        reference = (case.suite, case.baseline_id or case.id)
        anchor.setdefault(reference, position)
    order = sorted(
        range(len(cases)),
        key=lambda p: (
            anchor[(cases[p].suite, cases[p].baseline_id or cases[p].id)],
            not cases[p].is_autoregressive,
            p,
        ),
    )
    reordered = [items[slots[p]] for p in order]
    for slot, item in zip(slots, reordered, strict=True):
        items[slot] = item


def pytest_collection_finish(session: pytest.Session) -> None:
    bench = session.config.stash.get(SESSION_KEY, None)
    if bench is None:
        return
    for item in session.items:
        if isinstance(item, CaseItem):
            bench.models.expect(item.case.models)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    bench = item.config.stash.get(SESSION_KEY, None)
    if bench is not None and isinstance(item, CaseItem) and (report.when == "call" or not report.passed):
        bench.report(item.case, report.outcome, _reason(report))
    return report


def _reason(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    if report.failed:
        text = report.longreprtext.strip().splitlines()
        return text[0][:200] if text else "failed"
    return ""


def pytest_sessionfinish(session: pytest.Session) -> None:
    bench = session.config.stash.get(SESSION_KEY, None)
    if bench is None:
        return
    if bench.settings.update_baselines:
        bench.write_baselines()
    bench.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    bench = config.stash.get(SESSION_KEY, None)
    if bench is None or not bench.results:
        return
    updating = bench.settings.update_baselines
    by_suite = {}
    for name, run in bench.suites.items():
        order = {case_id: i for i, case_id in enumerate(run.cases)}  # collection order
        results = sorted((r for r in bench.results.values() if r.case.suite == name), key=lambda r: order[r.case.id])
        if results:
            by_suite[name] = results
    for name, results in by_suite.items():
        run = bench.suites[name]
        terminalreporter.write_sep("=", f"specdec suite {name} ({bench.settings.machine_class})")
        terminalreporter.write_line(summary.render(results, updating))
        missing = sum(1 for r in results if r.verdict is not None and r.verdict.status is Status.NO_BASELINE)
        if missing and not updating:
            terminalreporter.write_line(
                f"{missing} case(s) have no baseline in {run.baseline_file}: record with --specdec-update-baselines"
            )
    for update in bench.updates:
        terminalreporter.write_line(
            f"specdec: wrote {update.path} ({len(update.written)} recorded, {len(update.kept)} kept"
            + (
                f", {len(update.refused)} failed and not recorded: {', '.join(update.refused)}"
                if update.refused
                else ""
            )
            + ")"
        )
    header = {
        "machine_class": bench.settings.machine_class,
        "machine": machine_info(),
        "software": software(),
        "commit": bench.commit,
    }
    if bench.settings.report_json is not None:
        _write(bench.settings.report_json, summary.to_json(by_suite, header, updating))
        terminalreporter.write_line(f"specdec: summary written to {bench.settings.report_json}")
    if bench.settings.report_csv is not None:
        _write(bench.settings.report_csv, summary.to_csv(by_suite, updating))
        terminalreporter.write_line(f"specdec: summary written to {bench.settings.report_csv}")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
