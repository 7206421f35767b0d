"""pytest hooks and options of the specdec plugin (registered through the ``pytest11`` entry point).

``pytest --specdec-suite NAME`` collects ``bench_suites/NAME.yaml`` (or a path) into benchmark cases, runs each
through pytest-benchmark's fixture, gates it against ``baselines/NAME/<machine class>.json`` and prints a summary
table per suite. Without ``--specdec-suite`` the plugin only registers its markers.
"""

from __future__ import annotations

import itertools
import signal
import sys
import tempfile
import threading
from collections.abc import Generator, Iterable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from pytest_specdec.settings import ENV_MACHINE_CLASS, Settings

if TYPE_CHECKING:
    from pytest_specdec.session import BenchSession

# Everything that imports torch, transformers or specdec (collection, session, summary, machine) is imported only
# once --specdec-suite is given: the plugin is loaded into every pytest run of the environment and must cost nothing
# there (docs/suites.md, "Without a suite").

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
    group.addoption(
        "--specdec-report-html",
        metavar="PATH",
        default=None,
        help="also write one self-contained HTML page: the summary tables and plots (plots: pip install specdec[plot])",
    )
    group.addoption(
        "--specdec-report-md",
        metavar="PATH",
        default=None,
        help="also write a markdown summary (for a CI job summary such as $GITHUB_STEP_SUMMARY)",
    )
    group.addoption(
        "--specdec-history",
        action="append",
        default=[],
        metavar="GLOB",
        help="earlier runs for the HTML report's history: pytest-benchmark saves (e.g. '.benchmarks/*/*.json') or "
        "--specdec-report-json files; repeatable",
    )
    group.addoption(
        "--specdec-compare",
        metavar="NNNN|PATH",
        default=None,
        help="gate this run against a saved pytest-benchmark run (its number in --benchmark-storage, or a JSON "
        "path) instead of the baselines",
    )
    parser.addini("specdec_baselines_dir", "folder of baseline files, relative to the rootdir", default="baselines")


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    if not config.getoption("specdec_suite", None):
        return
    _refuse_untimed_runs(config)
    settings = Settings.from_config(config)
    names: dict[str, Path] = {}
    for path in settings.suites:
        if path.stem in names:
            raise pytest.UsageError(f"two suites are named {path.stem!r}: {names[path.stem]} and {path}")
        names[path.stem] = path
    if settings.update_baselines:
        _check_baselines_writable(settings)
    _warn_if_a_path_moved_the_rootdir(config)

    from pytest_specdec.collection import SESSION_KEY
    from pytest_specdec.saved_runs import SavedRunError
    from pytest_specdec.session import BenchSession

    bench = BenchSession(settings, config.rootpath, lambda: _serve_logs(config))
    try:
        bench.read_saved_runs(config.invocation_params.dir)
    except SavedRunError as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[SESSION_KEY] = bench
    _interrupt_on_sigterm(config)
    suite_args = [str(p) for p in settings.suites]
    if config.args_source is pytest.Config.ArgsSource.ARGS:
        config.args.extend(a for a in suite_args if a not in config.args)  # explicit paths run too
    else:
        config.args[:] = suite_args  # no paths given: run the suites only, not the testpaths


def _serve_logs(config: pytest.Config) -> Path:
    """Where the logs of the `specdec serve` processes that serving cases start go: under pytest's basetemp
    (``--basetemp``; by default a numbered folder under the system's temporary folder), never in the checkout."""
    factory = getattr(config, "_tmp_path_factory", None)  # pytest's tmp_path_factory, set by its tmpdir plugin
    if factory is None:
        return Path(tempfile.mkdtemp(prefix="specdec-serve-"))
    return Path(factory.getbasetemp()) / "specdec-serve"


def _bench(config: pytest.Config) -> BenchSession | None:
    """This run's suite session; None without ``--specdec-suite`` (and then nothing heavy is imported)."""
    if not config.getoption("specdec_suite", None):
        return None
    from pytest_specdec.collection import SESSION_KEY

    return config.stash.get(SESSION_KEY, None)


def _refuse_untimed_runs(config: pytest.Config) -> None:
    """Suites need timed rounds in one process: pytest-xdist turns pytest-benchmark's timing off and splits the
    summary, the reports and the baseline update across workers; ``--benchmark-disable`` runs one untimed pass."""
    workers = config.getoption("numprocesses", None)  # pytest-xdist's -n, when it is installed
    dist = config.getoption("dist", "no")
    if workers not in (None, 0, "0") or dist not in (None, "no"):
        shown = f"-n {workers}" if workers not in (None, 0, "0") else f"--dist {dist}"
        raise pytest.UsageError(
            f"--specdec-suite cannot run under pytest-xdist ({shown}): its workers run benchmarks untimed and split "
            "the summary, reports and baselines; run suites without -n/--dist"
        )
    if config.getoption("specdec_update_baselines") and config.getoption("benchmark_disable", False):
        raise pytest.UsageError(
            "--specdec-update-baselines with --benchmark-disable would record untimed passes as baselines: "
            "leave out --benchmark-disable to update them"
        )
    if config.getoption("specdec_update_baselines") and config.getoption("specdec_compare"):
        raise pytest.UsageError(
            "--specdec-compare with --specdec-update-baselines: an update gates nothing; leave out one of them"
        )
    if config.getoption("specdec_history") and not config.getoption("specdec_report_html"):
        raise pytest.UsageError(
            "--specdec-history feeds the HTML report's history plots: add --specdec-report-html PATH"
        )


def _check_baselines_writable(settings: Settings) -> None:
    from pytest_specdec.baselines import baseline_path, unwritable

    for suite in settings.suites:
        path = baseline_path(settings.baselines_dir, suite.stem, settings.machine_class)
        why = unwritable(path)
        if why is not None:
            raise pytest.UsageError(
                f"--specdec-update-baselines cannot write {path}: {why}; make the folder writable, or choose "
                "another with --specdec-baselines-dir DIR"
            )


PATH_OPTIONS = (  # options whose value pytest may take for a test path (when it exists) before plugins load
    "--specdec-suite",
    "--specdec-compare",
    "--specdec-report-json",
    "--specdec-report-csv",
    "--specdec-report-html",
    "--specdec-report-md",
    "--benchmark-storage",
    "--benchmark-json",
)


def _warn_if_a_path_moved_the_rootdir(config: pytest.Config) -> None:
    """pytest picks the rootdir before plugins load, so it reads the value of ``--specdec-suite PATH`` (two words)
    as a test path: a suite outside the invocation folder moves the rootdir, and the default baselines folder with
    it (and the commit the reports name). ``--specdec-suite=PATH`` (one word) does not. The same holds for every
    option whose value is an existing path (a report written by an earlier run, the benchmark storage). Say so
    rather than write baselines somewhere unexpected."""
    if config.getoption("specdec_baselines_dir") or config.option.rootdir:
        return  # the user chose where baselines go
    args = list(config.invocation_params.args)
    invocation = config.invocation_params.dir.resolve()
    for option, value in itertools.pairwise(args):
        if option not in PATH_OPTIONS:
            continue
        path = (invocation / str(value)).resolve()
        if not path.exists():
            continue  # pytest takes only existing paths for test paths
        if invocation != path and invocation not in path.parents and config.rootpath.resolve() != invocation:
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(
                    f"{option} {value}: pytest took this path for a test path before the plugin loaded, so "
                    f"the rootdir moved to {config.rootpath} and the baselines with it; write "
                    f"{option}={value} (one word) to keep the invocation's rootdir"
                ),
                stacklevel=2,
            )


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
    session = _bench(config)
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
    if session.compared is not None:
        lines.append(
            f"specdec gate: the saved run {session.compared.path} ({session.compared.describe()}), not the baselines"
        )
    if s.history:
        lines.append(f"specdec history: {len(session.history)} earlier run(s) from {', '.join(s.history)}")
    return lines


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-benchmark's (absent under -p no:benchmark)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, object]) -> None:
    """Saved runs and ``--benchmark-json`` record the GPU, its driver and CUDA, the CPU model and ISA, torch and
    transformers under ``machine_info["specdec"]`` (pytest-benchmark prints both machine_infos when
    ``--benchmark-compare`` finds they differ). Without a suite, only when the run imported torch itself."""
    session = _bench(config)
    if session is None and "torch" not in sys.modules:
        return
    from pytest_specdec.machine import benchmark_machine_info

    machine_class = session.settings.machine_class if session is not None else None
    machine_info["specdec"] = benchmark_machine_info(machine_class)


def pytest_benchmark_group_stats(
    config: pytest.Config | None, benchmarks: Iterable[dict[str, Any]], group_by: str
) -> list[tuple[str | None, list[dict[str, Any]]]]:
    """pytest-benchmark's own grouping, each group of saved runs named with their machine and software (the GPU or
    CPU model, CUDA and driver, torch, transformers), so that ``pytest-benchmark compare`` and
    ``--benchmark-compare`` show them. The ``pytest-benchmark`` command reads hooks only from ``./conftest.py``:
    this checkout's re-exports this one (docs/suites.md says how to do the same in another project)."""
    from pytest_benchmark.plugin import pytest_benchmark_group_stats as grouped

    from pytest_specdec.saved_runs import label_groups

    return label_groups(grouped(config=config, benchmarks=list(benchmarks), group_by=group_by))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    session = _bench(parent.config)
    if session is not None and file_path.resolve() in session.settings.suites:
        from pytest_specdec.collection import SuiteFile

        return SuiteFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(trylast=True)  # after shufflers (pytest-randomly runs first)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move each autoregressive case just before the first speculative case measured against it."""
    if _bench(config) is None:
        return
    from pytest_specdec.collection import CaseItem

    slots = [i for i, item in enumerate(items) if isinstance(item, CaseItem)]
    cases = [items[i].case for i in slots]  # type: ignore[attr-defined]
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
    bench = _bench(session.config)
    if bench is None:
        return
    from pytest_specdec.collection import CaseItem

    for item in session.items:
        if isinstance(item, CaseItem):
            bench.models.expect(item.case.models)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    bench = _bench(item.config)
    if bench is not None and (report.when == "call" or not report.passed):
        from pytest_specdec.collection import CaseItem

        if isinstance(item, CaseItem):
            bench.report(item.case, report.outcome, _reason(report, call))
    return report


def _reason(report: pytest.TestReport, call: pytest.CallInfo[None]) -> str:
    """One line: a skip's reason, or the exception's own type and message (not the first line of a traceback)."""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    if not report.failed:
        return ""
    if call.excinfo is not None:
        error = call.excinfo.value
        text = str(error.msg) if isinstance(error, pytest.fail.Exception) else call.excinfo.exconly()
    else:
        crash = getattr(report.longrepr, "reprcrash", None)
        text = crash.message if crash is not None else report.longreprtext
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else "failed"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Record baselines, write the reports and decide what the run's outcome says; each step runs even when one
    before it failed, and its errors are printed (after the summary) instead of raised."""
    bench = _bench(session.config)
    if bench is None:
        return
    interrupted = session.exitstatus == pytest.ExitCode.INTERRUPTED
    bench.finish(interrupted)
    if bench.settings.update_baselines:
        bench.write_baselines()
    bench.write_reports()
    bench.close()
    if (bench.errors or bench.nothing_measured()) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    bench = _bench(config)
    if bench is None:
        return
    from pytest_specdec import summary
    from pytest_specdec.gating import Status

    updating = bench.settings.update_baselines
    for name, results in bench.results_by_suite().items():
        run = bench.suites[name]
        terminalreporter.write_sep("=", f"specdec suite {name} ({bench.settings.machine_class})")
        terminalreporter.write_line(summary.render(results, updating))
        missing = sum(1 for r in results if r.verdict is not None and r.verdict.status is Status.NO_BASELINE)
        if missing and bench.compared is not None:
            terminalreporter.write_line(f"{missing} case(s) are not in the saved run {bench.compared.path}")
        elif missing and not updating:
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
            + (
                f"; {len(update.pooled)} speedup(s) are the median of the runs recorded at this commit"
                if update.pooled
                else ""
            )
            + (f"; the unreadable file it replaced is kept as {update.backup}" if update.backup else "")
        )
    for path in bench.reports_written:
        terminalreporter.write_line(f"specdec: summary written to {path}")
    nothing = bench.nothing_measured()
    if nothing:
        terminalreporter.write_line(nothing, red=True, bold=True)
    for error in bench.errors:
        terminalreporter.write_line(f"specdec: {error}", red=True, bold=True)
