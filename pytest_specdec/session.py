"""The state of one pytest run of suites (kept in ``config.stash``): settings, models, baselines and results, and the
life of one case: load, measure, compare, record."""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from pytest_specdec import report_html, report_md, summary
from pytest_specdec.baselines import BaselineError, BaselineUpdate, baseline_path, load_baselines, write_baselines
from pytest_specdec.cases import Case
from pytest_specdec.endpoints import ServerPool
from pytest_specdec.gating import Status, Verdict, compare
from pytest_specdec.machine import Environment, commit_info, environment, machine_info, software
from pytest_specdec.measurement import CaseRecord, Measurement
from pytest_specdec.models import ModelCache
from pytest_specdec.runner import Reference, build_engine, is_device_lost, is_out_of_memory, measure
from pytest_specdec.saved_runs import SavedRun, compared_records, find_saved_run, read_history, read_run, storage_folder
from pytest_specdec.serving import ServingError, measure_serving, serving_info
from pytest_specdec.settings import Settings
from specdec.analysis import expected_tokens_per_step
from specdec.errors import DeviceError, ModelLoadError, SpecdecError
from specdec.hf_engine import HFUnavailableError
from specdec.synthetic_acceptance import unconditional_rates

OUTCOME_RANK = {"not run": 0, "passed": 1, "skipped": 2, "failed": 3}
INTERRUPTED = "the run was interrupted (Ctrl-C or SIGTERM) while this case ran"


@dataclass
class CaseResult:
    """What became of one case in this run (the summary table's row)."""

    case: Case
    measurement: Measurement | None = None
    record: CaseRecord | None = None
    verdict: Verdict | None = None
    outcome: str = "not run"  # "passed", "failed", "skipped" once pytest reported the call; or "interrupted"
    reason: str = ""  # why it was skipped or failed (first line)
    by_category: dict[str, dict[str, Any]] = field(default_factory=dict)  # Measurement.category_report
    predicted_speedup: float | None = None  # synthetic cases at a fixed K: specdec.analysis's model at the case's costs


@dataclass
class SuiteRun:
    name: str
    path: Path
    baseline_file: Path
    baselines: dict[str, CaseRecord] | None = None  # loaded on first use
    cases: dict[str, Case] = field(default_factory=dict)  # collected, by id


TIMING_METRICS = frozenset({"speedup", "tokens_per_second"})


def error_line(error: BaseException) -> str:
    """The first line of an exception's message."""
    return (str(error).strip().splitlines() or [""])[0]


def _timing_only(verdict: Verdict) -> bool:
    """Whether ``verdict`` failed on timing metrics alone (deterministic metrics do not change on a second try)."""
    return verdict.failed and all(c.metric in TIMING_METRICS for c in verdict.regressions())


MAX_ATTEMPTS = 3  # a case that regresses on timing alone is measured up to this many times (pooled rounds)


def _after_attempts(first: Verdict, final: Verdict, attempts: int) -> Verdict:
    """A case whose timing regressed is measured again, up to ``MAX_ATTEMPTS`` times, and judged on the rounds of
    all its attempts (each step's fastest time over all of them): a burst of interference on a shared machine rarely
    covers a step in every round, a real loss always does, and more rounds only bring the steady times of both
    sides closer to their floors. The verdict says how many attempts it took."""
    shown = ", ".join(f"{c.metric} {c.now:.4g}" for c in first.regressions() if isinstance(c.now, float))
    times = {2: "twice", 3: "3 times"}.get(attempts, f"{attempts} times")
    note = f"measured {times}, judged on all attempts' rounds: the first attempt alone regressed ({shown})"
    return Verdict(final.status, final.checks, "; ".join(n for n in (final.note, note) if n))


class BenchSession:
    def __init__(self, settings: Settings, rootpath: Path, log_folder: Callable[[], Path] | None = None) -> None:
        self.settings = settings
        # the `specdec serve` processes of serving cases; their logs go to log_folder() (pytest's basetemp)
        self.servers = ServerPool(log_folder or (lambda: Path(tempfile.mkdtemp(prefix="specdec-serve-"))))
        self.models = ModelCache(settings.allow_download)
        self.suites: dict[str, SuiteRun] = {}
        self.results: dict[tuple[str, str], CaseResult] = {}  # by (suite, case id), in run order
        self.references: dict[tuple[str, str], Measurement | None] = {}  # autoregressive cases measured for others
        self.updates: list[BaselineUpdate] = []
        self.reports_written: list[Path] = []
        self.errors: list[str] = []  # what went wrong at the end (writing baselines or reports), shown last
        self.lost_devices: dict[str, str] = {}  # device -> which case made it unusable (a sticky CUDA error)
        self.commit = commit_info(rootpath, settings.baselines_dir)
        self.compared: SavedRun | None = None  # --specdec-compare: the saved run that gates instead of baselines
        self.history: list[SavedRun] = []  # --specdec-history: earlier runs for the HTML report
        self._compared: dict[tuple[str, str], CaseRecord] = {}
        self._environments: dict[tuple[str, int | None], Environment] = {}

    def read_saved_runs(self, invocation: Path) -> None:
        """``--specdec-compare`` and ``--specdec-history``, read before anything runs (a ``SavedRunError`` names the
        file or the run that is missing)."""
        settings = self.settings
        if settings.compare is not None:
            from pytest_benchmark.utils import get_machine_id

            storage = storage_folder(settings.benchmark_storage, invocation)
            self.compared = read_run(find_saved_run(settings.compare, storage, invocation, get_machine_id()))
            self._compared = compared_records(self.compared)
        if settings.history:
            self.history = read_history(settings.history, invocation)

    # -------------------------------------------------------------------------------------------------- setup
    def add_suite(self, name: str, path: Path) -> SuiteRun:
        run = self.suites.get(name)
        if run is None:
            target = baseline_path(self.settings.baselines_dir, name, self.settings.machine_class)
            run = self.suites[name] = SuiteRun(name=name, path=path, baseline_file=target)
        return run

    def baselines(self, suite: str) -> dict[str, CaseRecord]:
        """What gates the suite's cases: its baseline file, or the saved run of ``--specdec-compare``."""
        run = self.suites[suite]
        if run.baselines is None and self.compared is not None:
            run.baselines = {case: record for (name, case), record in self._compared.items() if name == suite}
        if run.baselines is None:
            try:
                run.baselines = load_baselines(run.baseline_file, self.settings.machine_class)
            except BaselineError:
                if not self.settings.update_baselines:
                    raise
                run.baselines = {}  # an update rewrites an unreadable file
        return run.baselines

    def gate_file(self, suite: str) -> Path:
        """The file this suite's cases are gated against (shown in a regression's message)."""
        return self.compared.path if self.compared is not None else self.suites[suite].baseline_file

    def environment(self, device: str, threads: int | None) -> Environment:
        key = (device, threads)
        if key not in self._environments:
            self._environments[key] = environment(self.settings.machine_class, device, threads)
        return self._environments[key]

    # ---------------------------------------------------------------------------------------------------- run
    def run_case(self, case: Case, benchmark: Any) -> None:
        """The body of every suite case: skip, fail or pass with the verdict against the baseline."""
        result = self.results[case.key] = CaseResult(case=case)
        if case.device in self.lost_devices:
            pytest.skip(f"{case.device} is unusable for the rest of this session: {self.lost_devices[case.device]}")
        try:
            baseline = self.baselines(case.suite).get(case.id)
        except BaselineError as error:
            pytest.fail(str(error), pytrace=False)
        if baseline is not None and not baseline.digest:  # a run saved before digests were: taken as unchanged
            baseline = replace(baseline, digest=case.digest())
        try:
            first = verdict = self._attempt(case, benchmark, baseline, result)
            attempts = 1
            while _timing_only(verdict) and attempts < MAX_ATTEMPTS and not self.settings.update_baselines:
                # a burst of interference or a real loss? measure again (outside pytest-benchmark's clock) and judge
                # all attempts' rounds together
                verdict = self._attempt(case, None, baseline, result, result.measurement)
                attempts += 1
            result.verdict = verdict if attempts == 1 else _after_attempts(first, verdict, attempts)
        finally:
            self.models.release(case.models)
        self._extra_info(benchmark, case, result)
        if self.settings.update_baselines:
            return
        baseline_file = self._display(self.gate_file(case.suite))
        if result.verdict.failed:
            pytest.fail(result.verdict.message(baseline_file), pytrace=False)
        if self.settings.strict and result.verdict.status in (Status.NO_BASELINE, Status.STALE):
            pytest.fail(
                f"{result.verdict.status.value} for {case.id} in {baseline_file} (--specdec-strict); "
                "record it with --specdec-update-baselines",
                pytrace=False,
            )

    def _attempt(
        self,
        case: Case,
        benchmark: Any | None,
        baseline: CaseRecord | None,
        result: CaseResult,
        earlier: Measurement | None = None,
    ) -> Verdict:
        """Measure ``case`` once (into ``result``, pooled with an ``earlier`` attempt's rounds if given) and judge it
        against ``baseline``."""
        measurement = self._measure(case, benchmark)
        result.measurement = earlier.pooled_with(measurement) if earlier is not None else measurement
        reference = self._reference(case)
        speedup, speedup_note = self._speedup(case, result.measurement, reference)
        result.by_category = result.measurement.category_report(reference)
        result.predicted_speedup = self._predicted_speedup(case, result.measurement)
        result.record = self._record(case, result.measurement, speedup)
        verdict = compare(result.record, baseline, case.tolerances)
        if speedup_note and verdict.status is not Status.REGRESSION:
            note = "; ".join(n for n in (verdict.note, speedup_note) if n)
            verdict = Verdict(verdict.status, verdict.checks, note=note)
        return verdict

    def _measure(self, case: Case, benchmark: Any | None) -> Measurement:
        if case.serving is not None:
            reference = self.suites[case.suite].cases.get(case.baseline_id or "") if case.baseline_id else None
            try:
                return measure_serving(case, self.servers, benchmark, reference)
            except ServingError as error:
                pytest.fail(str(error), pytrace=False)
        try:
            engine = build_engine(case, self.models)
        except (ModelLoadError, DeviceError) as error:
            pytest.skip(str(error))
        except SpecdecError as error:  # incompatible pair, unsupported architecture: the suite is wrong
            pytest.fail(f"{type(error).__name__}: {error}", pytrace=False)
        try:
            return measure(case, engine, benchmark, self._pair(case))
        except HFUnavailableError as error:  # hf-compile that this torch/transformers cannot compile here
            pytest.skip(str(error))
        except SpecdecError as error:
            pytest.fail(f"{type(error).__name__}: {error}", pytrace=False)
        except Exception as error:
            if is_device_lost(error):
                self.lost_devices[case.device] = f"{case.id} lost the device ({error_line(error)})"
                message = f"{type(error).__name__} on {case.device} running {case.id}: {error_line(error)}"
                pytest.fail(message, pytrace=False)
            if not is_out_of_memory(error):
                raise
            del engine
            self.models.clear()  # free everything so that the cases after this one can run
            pytest.fail(f"out of memory on {case.device} running {case.id}: {error}", pytrace=False)

    def _pair(self, case: Case) -> Reference | None:
        """The autoregressive case to pair ``case``'s rounds with (None for that case itself, or if it cannot run)."""
        reference = self.suites[case.suite].cases.get(case.baseline_id or "") if case.baseline_id else None
        if reference is None:
            return None
        try:
            return Reference(reference, build_engine(reference, self.models))
        except SpecdecError:
            return None

    def _reference(self, case: Case) -> Measurement | None:
        """The same run's autoregressive case for ``case`` (measured here if it was deselected); None for that case
        itself or when it did not run."""
        if case.baseline_id is None:
            return None
        reference_key = (case.suite, case.baseline_id)
        if reference_key in self.results:
            return self.results[reference_key].measurement
        if reference_key not in self.references:
            self.references[reference_key] = self._measure_reference(case)
        return self.references[reference_key]

    def _speedup(self, case: Case, measurement: Measurement, reference: Measurement | None) -> tuple[float | None, str]:
        """Speedup over the same run's autoregressive case: the ratio of steady times of the paired rounds; without
        pairs (``--benchmark-disable``), the ratio of the two cases' tokens/s."""
        if case.baseline_id is None:
            return None, ""
        if measurement.paired_speedup is not None:
            return measurement.paired_speedup, ""
        if reference is None or reference.tokens_per_second <= 0:
            return None, f"no speedup: {case.baseline_id} did not run"
        return measurement.tokens_per_second / reference.tokens_per_second, ""

    def _predicted_speedup(self, case: Case, measurement: Measurement) -> float | None:
        """For a synthetic case at a fixed K: ``specdec.analysis.predicted_speedup`` of the requested acceptance at
        K, with the costs this run measured: one step's draft + verification time against one autoregressive token
        (the reference case's seconds per token). None otherwise (adaptive K has no one K)."""
        speculation, reference = case.speculation, self._reference(case)
        if speculation is None or speculation.adaptive is not None or case.synthetic is None:
            return None
        if reference is None or reference.tokens_per_second <= 0 or not measurement.step_seconds:
            return None
        rates = unconditional_rates(speculation.acceptance, speculation.k)
        return expected_tokens_per_step(rates) / (measurement.step_seconds * reference.tokens_per_second)

    def _measure_reference(self, case: Case) -> Measurement | None:
        reference = self.suites[case.suite].cases.get(case.baseline_id or "")
        if reference is None:
            return None
        if reference.serving is not None:
            try:
                return measure_serving(reference, self.servers)
            except ServingError:
                return None
        try:
            engine = build_engine(reference, self.models)
            return measure(reference, engine)
        except SpecdecError:
            return None

    def _record(self, case: Case, measurement: Measurement, speedup: float | None) -> CaseRecord:
        return CaseRecord(
            digest=case.digest(),
            greedy=case.generation.greedy,
            acceptance_rate=measurement.acceptance_rate,
            tokens_per_forward=measurement.tokens_per_forward,
            tokens_per_second=measurement.tokens_per_second,
            speedup=speedup,
            output_hash=measurement.output_hash,
            new_tokens=measurement.new_tokens,
            peak_memory_bytes=measurement.peak_memory_bytes,
            environment=self.environment(case.device, case.threads),
            commit=self.commit.get("id"),
            recorded_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            synthetic=case.synthetic is not None,
        )

    def _extra_info(self, benchmark: Any, case: Case, result: CaseResult) -> None:
        measurement, record, verdict = result.measurement, result.record, result.verdict
        assert measurement is not None and record is not None and verdict is not None
        benchmark.extra_info.update(
            {
                "suite": case.suite,
                "case": case.id,
                "engine": case.engine,
                "target": case.target,
                "draft": case.draft,
                "draft_method": case.draft_method,
                "draft_options": case.draft_options,
                "k": case.k_label,
                "mean_k": measurement.mean_k,
                "policy": case.policy_name,
                "synthetic": case.synthetic,
                "temperature": case.generation.temperature,
                "batch_size": case.batch_size,
                "max_new_tokens": case.generation.max_new_tokens,
                "device": case.device,
                "device_model": record.environment.device_model,
                "dtype": case.dtype,
                "digest": record.digest,
                "acceptance_rate": measurement.acceptance_rate,
                "tokens_per_forward": measurement.tokens_per_forward,
                "mean_accepted_length": measurement.mean_accepted_length,
                "acceptance_by_position": list(measurement.acceptance_by_position),
                "acceptance_by_position_unconditional": list(measurement.acceptance_by_position_unconditional),
                "tokens_per_second": measurement.tokens_per_second,
                "speedup": record.speedup,
                "speedup_over": case.baseline_id,
                "ttft_s": measurement.ttft_s,
                "tpot_s": measurement.tpot_s,
                "itl_p50_s": measurement.itl_p50_s,
                "itl_p90_s": measurement.itl_p90_s,
                "itl_p99_s": measurement.itl_p99_s,
                "by_category": result.by_category or None,
                "paired_speedups": list(measurement.paired_speedups),
                "predicted_speedup": result.predicted_speedup,
                "drafted_by_position": list(measurement.positions.drafted),
                "reached_by_position": list(measurement.positions.reached),
                "accepted_by_position": list(measurement.positions.accepted),
                "peak_memory_bytes": measurement.peak_memory_bytes,
                "output_hash": measurement.output_hash,
                "repeatable": measurement.repeatable,
                "decoder_path": measurement.decoder_path,
                "verifier_backend": measurement.verifier_backend,
                "machine_class": self.settings.machine_class,
                "verdict": verdict.status.value,
                **serving_info(case, measurement),
            }
        )

    # ----------------------------------------------------------------------------------------------- results
    def report(self, case: Case, outcome: str, reason: str) -> None:
        """pytest's outcome of a case (called once per case from the report hook)."""
        result = self.results.setdefault(case.key, CaseResult(case=case))
        if OUTCOME_RANK[outcome] >= OUTCOME_RANK[result.outcome]:  # a teardown error turns a pass into a failure
            result.outcome, result.reason = outcome, reason

    def finish(self, interrupted: bool) -> None:
        """The session ends: a case that started but never reported was cut short by the interruption."""
        if not interrupted:
            return
        for result in self.results.values():
            if result.outcome == "not run":
                result.outcome, result.reason = "interrupted", INTERRUPTED

    def results_by_suite(self) -> dict[str, list[CaseResult]]:
        """Each suite's results in collection order (suites without any left out)."""
        by_suite = {}
        for name, run in self.suites.items():
            order = {case_id: i for i, case_id in enumerate(run.cases)}
            results = [r for r in self.results.values() if r.case.suite == name]
            if results:
                by_suite[name] = sorted(results, key=lambda r: order.get(r.case.id, len(order)))
        return by_suite

    def nothing_measured(self) -> str:
        """Under ``--specdec-strict``, the one line that fails a run in which every selected case skipped ("" when
        something was measured, or not strict)."""
        results = list(self.results.values())
        if not self.settings.strict or not results or any(r.outcome != "skipped" for r in results):
            return ""
        reasons = "; ".join(dict.fromkeys(r.reason or "no reason given" for r in results))
        return (
            f"specdec: nothing was measured (--specdec-strict): all {len(results)} selected case(s) skipped: {reasons}"
        )

    def write_baselines(self) -> None:
        """``--specdec-update-baselines``: record every passed case; a case that failed is refused. A file that
        cannot be written is reported in ``errors`` (the other suites' files are still written)."""
        for suite in self.suites.values():
            mine = [r for r in self.results.values() if r.case.suite == suite.name]
            records = {r.case.id: r.record for r in mine if r.outcome == "passed" and r.record is not None}
            refused = [r.case.id for r in mine if r.outcome == "failed"]
            if not records and not refused:
                continue
            header = {
                "machine": machine_info(),
                "software": software(),
                "commit": self.commit,
                "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
            try:
                update = write_baselines(
                    suite.baseline_file,
                    suite=suite.name,
                    machine_class=self.settings.machine_class,
                    records=records,
                    refused=refused,
                    header=header,
                )
            except OSError as error:
                self.errors.append(
                    f"could not write the baselines of suite {suite.name} to {suite.baseline_file}: "
                    f"{error.strerror or error}{f' ({error.filename})' if error.filename else ''}; nothing was "
                    "recorded for it: make the folder writable (or choose another with --specdec-baselines-dir) "
                    "and run the update again"
                )
                continue
            self.updates.append(update)

    def write_reports(self) -> None:
        """``--specdec-report-json/csv/md/html``: the summary rows of every suite (an unwritable path goes to
        ``errors``)."""
        settings, updating = self.settings, self.settings.update_baselines
        by_suite = self.results_by_suite()
        if not by_suite:
            return
        header = {
            "machine_class": settings.machine_class,
            "machine": machine_info(),
            "software": software(),
            "commit": self.commit,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "compared_with": str(self.compared.path) if self.compared is not None else None,
        }
        rows = {name: summary.records(results, updating) for name, results in by_suite.items()}
        for path, render in (
            (settings.report_json, lambda: summary.to_json(by_suite, header, updating)),
            (settings.report_csv, lambda: summary.to_csv(by_suite, updating)),
            (settings.report_md, lambda: report_md.render(rows, header)),
            (settings.report_html, lambda: report_html.render(rows, header, self.history, settings.history)),
        ):
            if path is None:
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(render(), encoding="utf-8")
            except OSError as error:
                self.errors.append(f"could not write the report {path}: {error.strerror or error}")
                continue
            self.reports_written.append(path)

    def close(self) -> None:
        self.models.clear()
        self.servers.close()

    @staticmethod
    def _display(path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
