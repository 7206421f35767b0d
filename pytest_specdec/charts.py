"""The HTML report's plots: what to draw, chosen from the summary rows (pure functions), and the drawing itself
(matplotlib's Agg canvas, imported only here and only when a plot is drawn; never a window).

Charts, each only where the rows hold its data:

- speedup against K, per suite entry (one line per drafting method or draft model, and per value of any other
  swept setting);
- speedup against the requested acceptance of ``policy: synthetic`` cases (``synthetic: {acceptance_rate: ...}``);
- acceptance per draft position (``acceptance_by_position``: accepted at position i / steps that reached i);
- speedup per prompt category (``by_category``);
- speedup per case across earlier runs (``--specdec-history``) and this one.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_specdec.saved_runs import SavedRun

Row = Mapping[str, Any]  # one row of summary.records()
PLOT_EXTRA = "pip install specdec[plot]"
MAX_SERIES = 10  # lines or bar groups per chart; more are split over several charts (tab10 has 10 colours)
SWEPT_LABELS = {  # settings that tell apart the lines of one chart, as their labels show them
    "device": "",
    "dtype": "",
    "batch_size": "bs=",
    "temperature": "t=",
    "policy": "",
    "max_new_tokens": "n=",
    "engine": "",
}


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[tuple[float, float], ...]  # (x, y); for categorical x, x is the category's index


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    kind: str = "line"  # "line" or "bar" (bars: one group per category, one bar per series)
    categories: tuple[str, ...] = ()  # tick labels of a categorical x axis (x = 0, 1, ...)
    reference: float | None = None  # a dashed horizontal line: speedup 1.0, the target alone
    y_range: tuple[float, float] | None = None


# --------------------------------------------------------------------------------------------- what to draw
def charts(suite: str, rows: Sequence[Row], history: Sequence[SavedRun] = ()) -> list[Chart]:
    """Every chart the rows of one suite have data for, in the page's order."""
    return [
        *speedup_by_k(suite, rows),
        *speedup_by_acceptance(suite, rows),
        *acceptance_by_position(suite, rows),
        *speedup_by_category(suite, rows),
        *speedup_history(suite, rows, history),
    ]


def speedup_by_k(suite: str, rows: Sequence[Row]) -> list[Chart]:
    """Per entry (one target) that sweeps K: speedup over the autoregressive case against fixed K, a line per way of
    drafting. Synthetic-policy cases have their own chart (:func:`speedup_by_acceptance`)."""
    result = []
    for group, mine in _by_group(rows).items():
        measured = [
            r
            for r in mine
            if str(r["k"]).isdigit() and _number(r.get("speedup")) is not None and r.get("policy") != "synthetic"
        ]
        if len({r["k"] for r in measured}) < 2:
            continue  # one K is no curve
        lines = _lines(measured, lambda r: (float(r["k"]), float(r["speedup"])))
        for part, chunk in _chunks(lines):
            result.append(
                Chart(
                    title=f"{suite} / {group}: speedup against K ({measured[0].get('target') or '?'}){part}",
                    x_label="K (tokens drafted per step)",
                    y_label="speedup over autoregressive",
                    series=chunk,
                    reference=1.0,
                )
            )
    return result


def speedup_by_acceptance(suite: str, rows: Sequence[Row]) -> list[Chart]:
    """Synthetic sweeps: speedup against the acceptance rate the ``synthetic`` policy was asked for."""
    measured = [
        r
        for r in rows
        if r.get("policy") == "synthetic"
        and isinstance(r.get("synthetic"), Mapping)
        and _number(r["synthetic"].get("acceptance_rate")) is not None
        and _number(r.get("speedup")) is not None
    ]
    if not measured:
        return []
    lines = _lines(
        measured,
        lambda r: (float(r["synthetic"]["acceptance_rate"]), float(r["speedup"])),
        extra=lambda r: f"{r['group']} k={r['k']}",
        exclude=("policy",),
    )
    return [
        Chart(
            title=f"{suite}: speedup against requested acceptance (synthetic){part}",
            x_label="requested acceptance rate",
            y_label="speedup over autoregressive",
            series=chunk,
            reference=1.0,
        )
        for part, chunk in _chunks(lines)
    ]


def acceptance_by_position(suite: str, rows: Sequence[Row]) -> list[Chart]:
    """Per entry: the conditional acceptance at each draft position, a line per case."""
    result = []
    for group, mine in _by_group(rows).items():
        lines = [
            Series(_short(r["case"]), tuple((i + 1.0, float(a)) for i, a in enumerate(r["acceptance_by_position"])))
            for r in mine
            if isinstance(r.get("acceptance_by_position"), Sequence)
            and r["acceptance_by_position"]
            and all(_number(a) is not None for a in r["acceptance_by_position"])
        ]
        for part, chunk in _chunks(lines):
            result.append(
                Chart(
                    title=f"{suite} / {group}: acceptance per draft position{part}",
                    x_label="draft position",
                    y_label="accepted / reached",
                    series=chunk,
                    y_range=(0.0, 1.05),
                )
            )
    return result


def speedup_by_category(suite: str, rows: Sequence[Row]) -> list[Chart]:
    """Per entry: speedup per prompt category, a bar per case."""
    result = []
    for group, mine in _by_group(rows).items():
        with_categories = [r for r in mine if isinstance(r.get("by_category"), Mapping) and r["by_category"]]
        categories = sorted({str(c) for r in with_categories for c in r["by_category"]})
        bars = []
        for r in with_categories:
            points = tuple(
                (float(i), float(speedup))
                for i, category in enumerate(categories)
                if isinstance(r["by_category"].get(category), Mapping)
                and (speedup := _number(r["by_category"][category].get("speedup"))) is not None
            )
            if points:
                bars.append(Series(_short(r["case"]), points))
        for part, chunk in _chunks(bars):
            result.append(
                Chart(
                    title=f"{suite} / {group}: speedup per prompt category{part}",
                    x_label="prompt category",
                    y_label="speedup over autoregressive",
                    series=chunk,
                    kind="bar",
                    categories=tuple(categories),
                    reference=1.0,
                )
            )
    return result


def speedup_history(suite: str, rows: Sequence[Row], history: Sequence[SavedRun]) -> list[Chart]:
    """Per entry: each case's speedup in every earlier run that holds it, then in this run."""
    if not history:
        return []
    labels = (*(_run_label(run) for run in history), "this run")
    result = []
    for group, mine in _by_group(rows).items():
        lines = []
        for r in mine:
            values = [_number(run.metric(suite, r["case"], "speedup")) for run in history]
            values.append(_number(r.get("speedup")))
            if sum(v is not None for v in values[:-1]) == 0:
                continue  # no earlier run holds this case
            lines.append(Series(_short(r["case"]), tuple((float(i), v) for i, v in enumerate(values) if v is not None)))
        for part, chunk in _chunks(lines):
            result.append(
                Chart(
                    title=f"{suite} / {group}: speedup across runs{part}",
                    x_label="run",
                    y_label="speedup over autoregressive",
                    series=chunk,
                    categories=labels,
                    reference=1.0,
                )
            )
    return result


def _run_label(run: SavedRun) -> str:
    return f"{run.label} {run.created_at[:10]}" if run.created_at else run.label


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _short(case_id: str) -> str:
    """``"tiny-code[k=4,cpu,fp32,bs=1]"`` -> ``"k=4,cpu,fp32,bs=1"`` (the entry is in the chart's title)."""
    match = re.search(r"\[(.*)\]$", case_id)
    return match.group(1) if match else case_id


def _by_group(rows: Sequence[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(str(r.get("group") or r["case"]), []).append(r)
    return groups


def _draft_label(r: Row, rows: Sequence[Row]) -> str:
    """The drafting method; with the draft model's name, or with its options where the rows hold several."""
    method = r.get("draft_method") or "?"
    if method == "model":
        drafts = {x.get("draft") for x in rows if x.get("draft_method") == "model"}
        return f"model {str(r.get('draft')).rstrip('/').rsplit('/', 1)[-1]}" if len(drafts) > 1 else "model"
    options = {x.get("draft_options") for x in rows if x.get("draft_method") == method}
    return f"{method} {r.get('draft_options')}" if len(options) > 1 and r.get("draft_options") else method


def _lines(
    rows: Sequence[Row],
    point: Any,
    extra: Any = None,
    exclude: tuple[str, ...] = (),
) -> list[Series]:
    """One line per way of drafting and per value of every other setting that differs between ``rows``; ``point``
    maps a row to (x, y), ``extra`` adds a label part of its own."""
    swept = [k for k in SWEPT_LABELS if k not in exclude and len({r.get(k) for r in rows}) > 1]
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        parts = [extra(r)] if extra is not None else []
        parts.append(_draft_label(r, rows))
        parts += [f"{SWEPT_LABELS[k]}{r.get(k)}" for k in swept]
        lines.setdefault(" ".join(parts), []).append(point(r))
    return [Series(label, tuple(sorted(points))) for label, points in lines.items()]


def _chunks(series: Sequence[Series]) -> list[tuple[str, tuple[Series, ...]]]:
    """At most MAX_SERIES series per chart; the title of each part says which part it is."""
    parts = [tuple(series[i : i + MAX_SERIES]) for i in range(0, len(series), MAX_SERIES)]
    if len(parts) <= 1:
        return [("", parts[0])] if parts else []
    return [(f" (part {n} of {len(parts)})", part) for n, part in enumerate(parts, start=1)]


# ---------------------------------------------------------------------------------------------- drawing
def plotting_unavailable() -> str | None:
    """Why plots cannot be drawn here (None when they can)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"plots need matplotlib, which is not installed: {PLOT_EXTRA}"
    return None


def png(chart: Chart) -> bytes:
    """The chart as a PNG, drawn on matplotlib's Agg canvas (no display, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10.0, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = [f"C{i}" for i in range(MAX_SERIES)]
    markers = "osD^v<>pXh"
    if chart.kind == "bar":
        width = 0.8 / max(len(chart.series), 1)
        for i, series in enumerate(chart.series):
            offset = (i - (len(chart.series) - 1) / 2) * width
            xs = [x + offset for x, _ in series.points]
            axes.bar(xs, [y for _, y in series.points], width=width, label=series.label, color=colours[i])
    else:
        for i, series in enumerate(chart.series):
            axes.plot(
                [x for x, _ in series.points],
                [y for _, y in series.points],
                marker=markers[i % len(markers)],
                color=colours[i % len(colours)],
                label=series.label,
            )
    if chart.categories:
        axes.set_xticks(range(len(chart.categories)), chart.categories)
        if sum(len(c) + 2 for c in chart.categories) > 90:  # labels that would run into each other
            axes.tick_params(axis="x", labelrotation=30)
            for label in axes.get_xticklabels():
                label.set_horizontalalignment("right")
    elif chart.kind == "line":
        xs = sorted({x for s in chart.series for x, _ in s.points})
        if xs and all(x == int(x) for x in xs) and len(xs) <= 16:
            axes.set_xticks(xs, [f"{x:g}" for x in xs])  # K and positions are whole numbers
    if chart.reference is not None:
        axes.axhline(chart.reference, color="0.5", linestyle="--", linewidth=1)
    if chart.y_range is not None:
        axes.set_ylim(*chart.y_range)
    axes.set_title(chart.title, fontsize=10, loc="left")
    axes.set_xlabel(chart.x_label)
    axes.set_ylabel(chart.y_label)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def data_uri(chart: Chart) -> str:
    """The chart as a ``data:`` URI: the page needs no file and no network."""
    return "data:image/png;base64," + base64.b64encode(png(chart)).decode("ascii")
