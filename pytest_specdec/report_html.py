"""``--specdec-report-html PATH``: one self-contained HTML page (inline CSS, plots as base64 PNG, no script, no
network) rendered from the same rows as the terminal summary and the JSON/CSV reports (``summary.records``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from pytest_specdec import charts, summary
from specdec import report

if TYPE_CHECKING:
    from pytest_specdec.saved_runs import SavedRun

Row = Mapping[str, Any]

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1180px;
       padding: 0 16px; color: #1d2125; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccd; }
h3 { font-size: 15px; margin-top: 20px; }
.meta { color: #555; margin: 2px 0; }
.counts span { display: inline-block; margin: 6px 6px 0 0; padding: 2px 10px; border-radius: 10px; background: #eef; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #d5d8dc; padding: 3px 8px; text-align: left; white-space: nowrap; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f4f6; }
tr.REGRESSION td, tr.failed td, span.REGRESSION, span.failed { background: #fde2e1; }
tr.improved td, span.improved { background: #e3f6e5; }
tr.skipped td, tr.interrupted td { color: #777; }
.note { background: #fff7d6; padding: 6px 10px; border-left: 3px solid #e0b400; }
ul.reasons li, ul.regressions li { margin: 2px 0; }
figure { margin: 12px 0; } figure img { max-width: 100%; border: 1px solid #e3e5e8; }
code { font-size: 12px; }
"""


def render(
    by_suite: Mapping[str, Sequence[Row]],
    header: Mapping[str, Any],
    history: Sequence[SavedRun] = (),
    history_patterns: Sequence[str] = (),
) -> str:
    """The page: the run's machine and software, then per suite its table, reasons and plots."""
    all_rows = [r for rows in by_suite.values() for r in rows]
    cannot_plot = charts.plotting_unavailable()
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>specdec benchmarks: {escape(', '.join(by_suite))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>specdec benchmarks: {escape(', '.join(by_suite))}</h1>",
        *_meta(header),
        _counts(summary.verdict_counts(all_rows)),
    ]
    if cannot_plot:
        parts.append(f'<p class="note">No plots in this report: {escape(cannot_plot)}</p>')
    if history_patterns and not history:
        shown = ", ".join(history_patterns)
        parts.append(f'<p class="note">--specdec-history {escape(shown)}: no earlier run of a suite matched</p>')
    for suite, rows in by_suite.items():
        parts.append(f'<h2 id="suite-{escape(suite)}">Suite {escape(suite)}</h2>')
        parts.append(_counts(summary.verdict_counts(rows)))
        parts.append(_table(rows))
        parts.extend(_reasons(rows))
        if cannot_plot is None:
            parts.extend(_figures(charts.charts(suite, rows, history)))
        if history:
            parts.extend(_history_table(suite, rows, history))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _meta(header: Mapping[str, Any]) -> list[str]:
    machine = header.get("machine") or {}
    software = header.get("software") or {}
    commit = header.get("commit") or {}
    device = ", ".join(machine.get("gpus") or []) or machine.get("cpu") or "?"
    lines = [
        f"machine class <b>{escape(str(header.get('machine_class', '?')))}</b>: {escape(str(device))}"
        + (f" (CUDA {escape(str(machine['cuda']))})" if machine.get("cuda") else "")
        + (f", {escape(str(machine.get('cores')))} cores" if machine.get("cores") else ""),
        ", ".join(f"{escape(str(k))} {escape(str(v))}" for k, v in software.items()),
    ]
    if commit.get("id"):
        lines.append(
            f"commit <code>{escape(str(commit['id'])[:12])}</code>"
            + (f" on {escape(str(commit['branch']))}" if commit.get("branch") else "")
            + (" (uncommitted changes)" if commit.get("dirty") else "")
        )
    created = header.get("created_at") or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines.append(f"written {escape(str(created))}")
    if header.get("compared_with"):
        lines.append(f"gated against the saved run {escape(str(header['compared_with']))}")
    return [f'<p class="meta">{line}</p>' for line in lines]


def _counts(counts: Mapping[str, int]) -> str:
    badges = "".join(f'<span class="{escape(kind)}">{escape(kind)}: {n}</span>' for kind, n in counts.items())
    return f'<p class="counts">{badges}</p>'


def _table(rows: Sequence[Row]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in summary.HEADERS)
    body = []
    for row in rows:
        cells = []
        for name, value in zip(summary.HEADERS, summary.table_row(row), strict=True):
            css = ' class="number"' if name in summary.NUMBER_COLUMNS else ""
            cells.append(f"<td{css}>{escape(report.fmt(value))}</td>")
        body.append(f'<tr class="{escape(summary.verdict_kind(row))}">{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _reasons(rows: Sequence[Row]) -> list[str]:
    parts = []
    regressed = [r for r in rows if r.get("regressions")]
    if regressed:
        items = "".join(
            f"<li><code>{escape(r['case'])}</code>: {escape(str(r['regressions']))}</li>" for r in regressed
        )
        parts.append(f'<h3>Regressions</h3><ul class="regressions">{items}</ul>')
    reasons = summary.reasons(rows)
    if reasons:
        items = "".join(
            f"<li>{escape(outcome)} ({count} case{'s' if count > 1 else ''}): {escape(reason)}</li>"
            for outcome, reason, count in reasons
        )
        parts.append(f'<h3>Failures and skips</h3><ul class="reasons">{items}</ul>')
    return parts


def _figures(drawn: Sequence[charts.Chart]) -> list[str]:
    return [f'<figure><img alt="{escape(chart.title)}" src="{charts.data_uri(chart)}"></figure>' for chart in drawn]


def _history_table(suite: str, rows: Sequence[Row], history: Sequence[SavedRun]) -> list[str]:
    """Speedup per case (rows) and run (columns): the history plot's numbers, readable without plots."""
    kept = [r for r in rows if any(run.metric(suite, r["case"], "speedup") is not None for run in history)]
    if not kept:
        return [f'<p class="meta">No earlier run given with --specdec-history holds a case of {escape(suite)}.</p>']
    head = "".join(f"<th>{escape(run.label)}</th>" for run in history)
    body = []
    for r in kept:
        cells = [report.fmt(run.metric(suite, r["case"], "speedup"), 2) for run in history]
        cells.append(report.fmt(r.get("speedup"), 2))
        body.append(
            f"<tr><td>{escape(r['case'])}</td>"
            + "".join(f'<td class="number">{escape(c)}</td>' for c in cells)
            + "</tr>"
        )
    return [
        "<h3>Speedup across runs</h3>",
        f"<table><thead><tr><th>case</th>{head}<th>this run</th></tr></thead><tbody>{''.join(body)}</tbody></table>",
    ]
