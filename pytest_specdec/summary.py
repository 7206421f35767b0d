"""The end-of-run report per suite, rendered by specdec's one reporter: a table for the terminal, rows for JSON/CSV."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_specdec.gating import Status
from pytest_specdec.serving import serving_info
from specdec import report

if TYPE_CHECKING:
    from pytest_specdec.session import CaseResult

HEADERS = (
    "case",
    "engine",
    "draft",
    "K",
    "acceptance",
    "tokens/fwd",
    "tau",
    "tokens/s",
    "ttft ms",
    "speedup",
    "verdict",
)
# right-aligned where that is up to us
NUMBER_COLUMNS = frozenset({"acceptance", "tokens/fwd", "tau", "tokens/s", "ttft ms", "speedup"})
VERDICTS = (  # what a case counts as in the reports' verdict counts, worst first
    Status.REGRESSION.value,
    "failed",
    "interrupted",
    Status.STALE.value,
    Status.NO_BASELINE.value,
    Status.IMPROVED.value,
    Status.PASS.value,
    "skipped",
    "not run",
)


def verdict_cell(result: CaseResult, updating: bool) -> str:
    if result.outcome in ("skipped", "interrupted", "not run"):
        return result.outcome
    if result.verdict is None or (result.outcome == "failed" and not result.verdict.failed):
        return "failed"
    text = result.verdict.summary()
    return f"{text}; recorded" if updating and result.outcome == "passed" else text


def _k_cell(record: Mapping[str, Any]) -> str:
    label = str(record["k"])
    if label == "auto" and record.get("mean_k") is not None:
        return f"auto ({record['mean_k']:.1f})"
    return label


def table_row(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """One row of the summary table (terminal, HTML and markdown alike) from one of :func:`records`' rows."""
    tokens_per_forward, tokens_per_second = record["tokens_per_forward"], record["tokens_per_second"]
    # rows of earlier reports (--specdec-history) may predate engine, tau and ttft
    speedup, tau, ttft = record["speedup"], record.get("mean_accepted_length"), record.get("ttft_s")
    return (
        record["case"],
        record.get("engine", "specdec"),
        record["draft_method"] or "-",
        _k_cell(record),
        record["acceptance_rate"],
        f"{tokens_per_forward:.2f}" if tokens_per_forward is not None else None,
        f"{tau:.2f}" if tau is not None else None,
        f"{tokens_per_second:.1f}" if tokens_per_second is not None else None,
        f"{ttft * 1000:.1f}" if ttft is not None else None,
        f"{speedup:.2f}x" if speedup is not None else None,
        record["verdict"],
    )


def reasons(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, int]]:
    """Each distinct skip or failure reason once, sorted: (outcome, reason, how many cases). A regression's
    reason is its verdict, shown in the table, so it is left out."""
    counts = Counter(
        (r["outcome"], r["reason"])
        for r in rows
        if r["outcome"] in ("skipped", "failed", "interrupted") and r["reason"] and r["status"] != Status.REGRESSION
    )
    return [(outcome, reason, count) for (outcome, reason), count in sorted(counts.items())]


def verdict_kind(row: Mapping[str, Any]) -> str:
    """One of :data:`VERDICTS` for a row of :func:`records`: a regression (failed, or recorded by an update), an
    outcome that left no verdict (failed, skipped, ...), else the gate's status."""
    if row["status"] == Status.REGRESSION.value:
        return Status.REGRESSION.value
    if row["outcome"] in ("failed", "interrupted", "skipped", "not run") or row["status"] is None:
        return str(row["outcome"])
    return str(row["status"])


def verdict_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many rows count as each verdict, worst first (verdicts no row has are left out)."""
    counts = Counter(verdict_kind(r) for r in rows)
    return {kind: counts[kind] for kind in VERDICTS if counts[kind]}


def category_table(results: Sequence[CaseResult]) -> str:
    """Cases (rows) by prompt category (columns), each cell ``speedup / tau`` ("" when no case has categories)."""
    measured = [r for r in results if r.by_category]
    categories = list(dict.fromkeys(c for r in measured for c in r.by_category))
    if not categories:
        return ""
    rows = []
    for r in measured:
        cells: list[str | None] = []
        for category in categories:
            entry = r.by_category.get(category)
            if entry is None:
                cells.append(None)
                continue
            speedup, tau = entry["speedup"], entry["mean_accepted_length"]
            cells.append(
                f"{f'{speedup:.2f}x' if speedup is not None else '-'} / {f'{tau:.2f}' if tau is not None else '-'}"
            )
        rows.append((r.case.id, *cells))
    return "per prompt category: speedup / tau (tokens per target step)\n" + report.table(rows, ("case", *categories))


def _ms(seconds: float | None) -> str | None:
    return f"{seconds * 1000:.1f}" if seconds is not None else None


def serving_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Serving cases (engine openai): load, throughputs and latency percentiles ("" when the suite has none)."""
    served = [r for r in rows if r.get("concurrency") is not None and r.get("output_throughput") is not None]
    if not served:
        return ""
    table = [
        (
            r["case"],
            r["concurrency"],
            r["requests"],
            f"{r['request_throughput']:.2f}",
            f"{r['output_throughput']:.1f}",
            _ms(r["ttft_p50_s"]),
            _ms(r["ttft_p99_s"]),
            _ms(r["tpot_s"]),
            _ms(r["itl_p50_s"]),
            _ms(r["itl_p99_s"]),
        )
        for r in served
    ]
    headers = ("case", "conc.", "requests", "req/s", "tok/s", "ttft p50", "ttft p99", "tpot", "itl p50", "itl p99")
    return "serving: throughput and latency (ms)\n" + report.table(table, headers)


def render(results: Sequence[CaseResult], updating: bool) -> str:
    """The table, the per-category table when a case has categories, then each distinct skip or failure reason
    once (with how many cases it concerns)."""
    rows = records(results, updating)
    text = report.table([table_row(r) for r in rows], HEADERS)
    by_category = category_table(results)
    if by_category:
        text += "\n\n" + by_category
    serving = serving_table(rows)
    if serving:
        text += "\n\n" + serving
    for outcome, reason, count in reasons(rows):
        text += f"\n{outcome} ({count} case{'s' if count > 1 else ''}): {reason}"
    return text


def _regressions(result: CaseResult) -> str | None:
    """Every regressed metric with its baseline, value now and tolerance, in one line (None when none)."""
    checks = result.verdict.regressions() if result.verdict is not None else []
    return "; ".join(c.describe() for c in checks) or None


def records(results: Sequence[CaseResult], updating: bool) -> list[dict[str, Any]]:
    """One flat dict per case: the table's columns and everything else a report needs. Every report (terminal,
    JSON, CSV, HTML, markdown) is rendered from these rows."""
    rows = []
    for r in results:
        m, record, case = r.measurement, r.record, r.case
        rows.append(
            {
                "suite": case.suite,
                "case": case.id,
                "group": case.group,
                "engine": case.engine,
                "target": case.target,
                "draft_method": case.draft_method,
                "draft": case.draft,
                "draft_options": " ".join(f"{key}={value}" for key, value in case.draft_options.items()) or None,
                "k": case.k_label,
                "mean_k": m.mean_k if m else None,
                "device": case.device,
                "dtype": case.dtype,
                "batch_size": case.batch_size,
                "temperature": case.generation.temperature,
                "policy": case.policy_name,
                "synthetic": case.synthetic,
                "max_new_tokens": case.generation.max_new_tokens,
                "outcome": r.outcome,
                "verdict": verdict_cell(r, updating),
                "status": r.verdict.status.value if r.verdict is not None else None,
                "regressions": _regressions(r),
                "acceptance_rate": m.acceptance_rate if m else None,
                "tokens_per_forward": m.tokens_per_forward if m else None,
                "mean_accepted_length": m.mean_accepted_length if m else None,
                "acceptance_by_position": list(m.acceptance_by_position) if m else None,
                "acceptance_by_position_unconditional": list(m.acceptance_by_position_unconditional) if m else None,
                "tokens_per_second": m.tokens_per_second if m else None,
                "speedup": record.speedup if record else None,
                "speedup_over": case.baseline_id,
                "ttft_s": m.ttft_s if m else None,
                "tpot_s": m.tpot_s if m else None,
                "itl_p50_s": m.itl_p50_s if m else None,
                "itl_p90_s": m.itl_p90_s if m else None,
                "itl_p99_s": m.itl_p99_s if m else None,
                "by_category": r.by_category or None,
                "predicted_speedup": r.predicted_speedup,
                "peak_memory_bytes": m.peak_memory_bytes if m else None,
                "output_hash": m.output_hash if m else None,
                "reason": r.reason,
                **serving_info(case, m),
            }
        )
    return rows


def to_json(results_by_suite: Mapping[str, Sequence[CaseResult]], header: dict[str, Any], updating: bool) -> str:
    return report.to_json({**header, "suites": {name: records(rs, updating) for name, rs in results_by_suite.items()}})


CASE_ONLY = (  # metrics a category row leaves empty: they are measured over the whole case only
    "acceptance_by_position",
    "acceptance_by_position_unconditional",
    "ttft_s",
    "tpot_s",
    "itl_p50_s",
    "itl_p90_s",
    "itl_p99_s",
    "peak_memory_bytes",
    "output_hash",
)


def csv_rows(results: Sequence[CaseResult], updating: bool) -> list[dict[str, Any]]:
    """The records without ``by_category``, each followed by one row per prompt category: the case's columns with
    ``category`` set, the category's own metrics and ``prompts``, and the ``CASE_ONLY`` metrics empty (the case's
    own row has an empty ``category``)."""
    rows = []
    for record in records(results, updating):
        by_category = record.pop("by_category") or {}
        rows.append({**record, "category": None, "prompts": None})
        for category, metrics in by_category.items():
            rows.append({**record, **dict.fromkeys(CASE_ONLY), "category": category, **metrics})
    return rows


def to_csv(results_by_suite: Mapping[str, Sequence[CaseResult]], updating: bool) -> str:
    return report.to_csv([row for rs in results_by_suite.values() for row in csv_rows(rs, updating)])
