"""The end-of-run report per suite, rendered by specdec's one reporter: a table for the terminal, rows for JSON/CSV."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

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


def verdict_cell(result: CaseResult, updating: bool) -> str:
    if result.outcome in ("skipped", "interrupted", "not run"):
        return result.outcome
    if result.verdict is None or (result.outcome == "failed" and not result.verdict.failed):
        return "failed"
    text = result.verdict.summary()
    return f"{text}; recorded" if updating and result.outcome == "passed" else text


def _k_cell(result: CaseResult) -> str:
    label = result.case.k_label
    if label == "auto" and result.measurement is not None:
        return f"auto ({result.measurement.mean_k:.1f})"
    return label


def table_rows(results: Sequence[CaseResult], updating: bool) -> list[tuple[Any, ...]]:
    rows = []
    for r in results:
        m, speedup = r.measurement, r.record.speedup if r.record is not None else None
        rows.append(
            (
                r.case.id,
                r.case.engine,
                r.case.draft_method or "-",
                _k_cell(r),
                m.acceptance_rate if m is not None else None,
                f"{m.tokens_per_forward:.2f}" if m is not None else None,
                f"{m.mean_accepted_length:.2f}" if m is not None and m.mean_accepted_length is not None else None,
                f"{m.tokens_per_second:.1f}" if m is not None else None,
                f"{m.ttft_s * 1000:.1f}" if m is not None and m.ttft_s is not None else None,
                f"{speedup:.2f}x" if speedup is not None else None,
                verdict_cell(r, updating),
            )
        )
    return rows


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


def render(results: Sequence[CaseResult], updating: bool) -> str:
    """The table, the per-category table when a case has categories, then each distinct skip or failure reason
    once (with how many cases it concerns)."""
    text = report.table(table_rows(results, updating), HEADERS)
    by_category = category_table(results)
    if by_category:
        text += "\n\n" + by_category
    reasons = Counter(
        (r.outcome, r.reason)
        for r in results
        if r.outcome in ("skipped", "failed", "interrupted")
        and r.reason
        and not (r.verdict is not None and r.verdict.failed)
    )
    for (outcome, reason), count in sorted(reasons.items()):
        text += f"\n{outcome} ({count} case{'s' if count > 1 else ''}): {reason}"
    return text


def records(results: Sequence[CaseResult], updating: bool) -> list[dict[str, Any]]:
    """One flat dict per case: the table's columns and everything else a report needs."""
    rows = []
    for r in results:
        m, record, case = r.measurement, r.record, r.case
        rows.append(
            {
                "suite": case.suite,
                "case": case.id,
                "group": case.group,
                "engine": case.engine,
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
