"""``--specdec-report-md PATH``: a markdown summary fit for a CI job summary (GitHub's ``$GITHUB_STEP_SUMMARY``):
the verdict counts, the regressions first with their reason, then one table per suite. Rendered from the same rows
as every other report (``summary.records``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_specdec import summary
from specdec import report

Row = Mapping[str, Any]
FIRST = ("REGRESSION", "failed", "interrupted")  # table rows shown before the others, in this order


def render(by_suite: Mapping[str, Sequence[Row]], header: Mapping[str, Any]) -> str:
    all_rows = [r for rows in by_suite.values() for r in rows]
    counts = summary.verdict_counts(all_rows)
    failing = sum(n for kind, n in counts.items() if kind in FIRST)
    headline = "failed" if failing else "passed"
    lines = [
        f"## specdec benchmarks {headline}: {', '.join(by_suite)} on {header.get('machine_class', '?')}",
        "",
        ", ".join(f"**{n} {kind}**" if kind in FIRST else f"{n} {kind}" for kind, n in counts.items()),
    ]
    if header.get("compared_with"):
        lines += ["", f"Gated against the saved run `{header['compared_with']}`."]
    regressed = [(suite, r) for suite, rows in by_suite.items() for r in rows if r.get("regressions")]
    if regressed:
        lines += ["", "### Regressions", ""]
        lines += [f"- `{suite}` `{r['case']}`: {_cell(r['regressions'])}" for suite, r in regressed]
    reasons = [(suite, reason) for suite, rows in by_suite.items() for reason in summary.reasons(rows)]
    if reasons:
        lines += ["", "### Failures and skips", ""]
        lines += [
            f"- `{suite}` {outcome} ({count} case{'s' if count > 1 else ''}): {_cell(reason)}"
            for suite, (outcome, reason, count) in reasons
        ]
    for suite, rows in by_suite.items():
        lines += ["", f"### {suite}", "", _table(rows)]
    commit = header.get("commit") or {}
    software = header.get("software") or {}
    versions = ", ".join(f"{k} {v}" for k, v in software.items() if k in ("torch", "transformers", "specdec"))
    lines += ["", f"<sub>commit {str(commit.get('id') or '?')[:12]}; {versions}</sub>"]
    return "\n".join(lines) + "\n"


def _table(rows: Sequence[Row]) -> str:
    """The summary table, regressions and failures first (each group in run order)."""
    order = {kind: i for i, kind in enumerate(FIRST)}
    ranked = sorted(rows, key=lambda r: order.get(summary.verdict_kind(r), len(FIRST)))
    lines = [
        "| " + " | ".join(summary.HEADERS) + " |",
        "| " + " | ".join("---:" if h in summary.NUMBER_COLUMNS else "---" for h in summary.HEADERS) + " |",
    ]
    for row in ranked:
        cells = [_cell(report.fmt(v)) for v in summary.table_row(row)]
        cells[0] = f"`{cells[0]}`"
        if summary.verdict_kind(row) in FIRST:
            cells[-1] = f"**{cells[-1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell or list item: one line, no column breaks."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
