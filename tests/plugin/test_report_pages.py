"""The HTML page and the markdown summary, rendered from hand-built summary rows (the fields other parts of issue 11
add, such as ``acceptance_by_position``, ``by_category`` and the synthetic policy, included), and the page checked in
a real headless Chromium where one is installed."""

from __future__ import annotations

import base64
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_specdec import charts, report_html, report_md, summary
from pytest_specdec.saved_runs import SavedRun

HEADER = {
    "machine_class": "test-machine",
    "machine": {"cpu": "Test CPU", "cores": 2},
    "software": {"torch": "2.13.0", "transformers": "5.24.0"},
    "commit": {"id": "0123456789abcdef", "branch": "main", "dirty": False},
    "created_at": "2026-12-01T00:00:00+00:00",
}


def row(case: str, **changes: Any) -> dict[str, Any]:
    """A row as ``summary.records`` writes it (a passed speculative case of entry ``pair`` unless changed)."""
    k = re.search(r"k=(\w+)", case)
    values: dict[str, Any] = {
        "suite": "s",
        "case": case,
        "group": case.split("[")[0],
        "target": "zoo:tiny-code-target",
        "draft_method": "model",
        "draft": "zoo:tiny-code-draft",
        "draft_options": None,
        "k": k.group(1) if k else "ar",
        "mean_k": 4.0,
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 1,
        "temperature": 0.0,
        "policy": "lossless",
        "max_new_tokens": 16,
        "outcome": "passed",
        "verdict": "pass",
        "status": "pass",
        "regressions": None,
        "acceptance_rate": 0.5,
        "tokens_per_forward": 2.0,
        "tokens_per_second": 100.0,
        "speedup": 1.5,
        "speedup_over": "pair[ar,cpu,fp32,bs=1]",
        "reason": "",
    }
    values.update(changes)
    return values


AR = row("pair[ar,cpu,fp32,bs=1]", draft_method=None, draft=None, speedup=None, acceptance_rate=None)
MODEL = [row(f"pair[model,k={k},cpu,fp32,bs=1]", speedup=1.0 + k / 10) for k in (2, 4, 6)]
NGRAM = [
    row(f"pair[ngram,k={k},cpu,fp32,bs=1]", draft_method="ngram", draft=None, draft_options="max_ngram=3", speedup=1.1)
    for k in (2, 4)
]
REGRESSED = row(
    "pair[model,k=8,cpu,fp32,bs=1]",
    speedup=0.7,
    outcome="failed",
    status="REGRESSION",
    verdict="REGRESSION: speedup",
    regressions="speedup: baseline 1.5, now 0.7, tolerance -35% (fails below 0.975)",
    reason="regressed against baselines/s/test-machine.json: speedup",
)
SKIPPED = row(
    "gpu[ar,cuda,fp32,bs=1]",
    outcome="skipped",
    status=None,
    verdict="skipped",
    reason="cuda is not available | here",
    speedup=None,
    tokens_per_second=None,
    tokens_per_forward=None,
    acceptance_rate=None,
)
SYNTHETIC = [
    row(
        f"syn[synthetic,k=4,cpu,fp32,bs=1,synthetic-{a}]",
        group="syn",
        draft_method="synthetic",
        policy="synthetic",
        synthetic={"acceptance_rate": a},
        speedup=0.8 + 2 * a,
    )
    for a in (0.2, 0.5, 0.8)
]
POSITIONS = row("pos[model,k=3,cpu,fp32,bs=1]", acceptance_by_position=[0.9, 0.7, 0.5])
CATEGORIES = row(
    "cat[model,k=4,cpu,fp32,bs=1]",
    by_category={"code": {"speedup": 1.8, "prompts": 2}, "chat": {"speedup": 1.2, "prompts": 2}},
)
EVERYTHING = [AR, *MODEL, *NGRAM, REGRESSED, SKIPPED, *SYNTHETIC, POSITIONS, CATEGORIES]


def saved(label: str, speedups: dict[str, float], created_at: str) -> SavedRun:
    return SavedRun(
        path=Path(f"/runs/{label}_x.json"),
        label=label,
        created_at=created_at,
        commit=None,
        machine_info={},
        cases={("s", case): {"suite": "s", "case": case, "speedup": v} for case, v in speedups.items()},
        from_benchmark=True,
    )


HISTORY = [
    saved("0001", {MODEL[0]["case"]: 1.1, MODEL[1]["case"]: 1.3}, "2026-11-01T00:00:00"),
    saved("0002", {MODEL[0]["case"]: 1.15}, "2026-11-02T00:00:00"),
]


def png_size(uri: str) -> tuple[int, int]:
    data = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


# ---------------------------------------------------------------------------------------------- chart choice
def test_speedup_against_k_has_a_line_per_drafting_method_with_k_on_x():
    (chart,) = charts.speedup_by_k("s", [AR, *MODEL, *NGRAM, REGRESSED])
    lines = {s.label: s.points for s in chart.series}
    assert lines == {"model": ((2.0, 1.2), (4.0, 1.4), (6.0, 1.6), (8.0, 0.7)), "ngram": ((2.0, 1.1), (4.0, 1.1))}
    assert "zoo:tiny-code-target" in chart.title and chart.reference == 1.0


def test_lines_are_told_apart_by_every_setting_that_differs():
    sampled = [row(f"pair[model,k={k},cpu,fp32,bs=1,t=0.8]", temperature=0.8) for k in (2, 4)]
    other_draft = [row("pair[model-b,k=2,cpu,fp32,bs=1]", draft="./models/b")]
    (chart,) = charts.speedup_by_k("s", [*MODEL, *sampled, *other_draft])
    assert {s.label for s in chart.series} == {
        "model zoo:tiny-code-draft t=0.0",
        "model zoo:tiny-code-draft t=0.8",
        "model b t=0.0",
    }


def test_more_lines_than_colours_are_split_over_charts():
    many = [
        row(f"pair[m{n},k={k},cpu,fp32,bs=1]", draft_method=f"m{n}")
        for n in range(charts.MAX_SERIES + 3)
        for k in (2, 4)
    ]
    parts = charts.speedup_by_k("s", many)
    assert [len(c.series) for c in parts] == [charts.MAX_SERIES, 3]
    assert parts[1].title.endswith("(part 2 of 2)")


def test_charts_of_fields_a_run_lacks_are_left_out():
    assert [c.title for c in charts.charts("s", [AR, *MODEL])] == ["s / pair: speedup against K (zoo:tiny-code-target)"]
    assert charts.speedup_by_acceptance("s", [*MODEL, row("x[k=2]", policy="synthetic", synthetic=None)]) == []


def test_synthetic_acceptance_sweep_is_plotted_against_the_requested_rate():
    (chart,) = charts.speedup_by_acceptance("s", [*MODEL, *SYNTHETIC])
    (line,) = chart.series
    assert [x for x, _ in line.points] == [0.2, 0.5, 0.8]
    assert [y for _, y in line.points] == pytest.approx([1.2, 1.8, 2.4])
    assert chart.x_label == "requested acceptance rate"


def test_acceptance_per_position_and_speedup_per_category():
    (positions,) = charts.acceptance_by_position("s", [*MODEL, POSITIONS])
    assert positions.series[0].points == ((1.0, 0.9), (2.0, 0.7), (3.0, 0.5))
    (categories,) = charts.speedup_by_category("s", [*MODEL, CATEGORIES])
    assert categories.kind == "bar" and categories.categories == ("chat", "code")
    assert categories.series[0].points == ((0.0, 1.2), (1.0, 1.8))


def test_history_follows_each_case_across_runs_and_this_one():
    (chart,) = charts.speedup_history("s", [AR, *MODEL], HISTORY)
    assert chart.categories == ("0001 2026-11-01", "0002 2026-11-02", "this run")
    lines = {s.label: s.points for s in chart.series}
    assert lines == {
        "model,k=2,cpu,fp32,bs=1": ((0.0, 1.1), (1.0, 1.15), (2.0, 1.2)),
        "model,k=4,cpu,fp32,bs=1": ((0.0, 1.3), (2.0, 1.4)),  # not in run 0002
    }


# ---------------------------------------------------------------------------------------------- the HTML page
def test_the_page_is_self_contained_with_every_plot_embedded():
    pytest.importorskip("matplotlib")
    page = report_html.render({"s": EVERYTHING}, HEADER, HISTORY, ("runs/*.json",))
    images = re.findall(r'<img alt="([^"]*)" src="([^"]*)"', page)
    titles = [title for title, _ in images]
    assert len(images) == len(charts.charts("s", EVERYTHING, HISTORY)) == 5
    assert any("against requested acceptance" in t for t in titles)
    assert any("per draft position" in t for t in titles) and any("per prompt category" in t for t in titles)
    assert all(png_size(uri)[0] > 300 and png_size(uri)[1] > 100 for _, uri in images)
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched
    assert "<td>pair[model,k=8,cpu,fp32,bs=1]</td>" in page and 'class="REGRESSION"' in page
    assert "speedup: baseline 1.5, now 0.7" in page  # the regression's reason
    assert "cuda is not available | here" in page  # a skip's reason, escaped where needed
    assert "<th>0001</th><th>0002</th><th>this run</th>" in page  # the history as a table too


def test_without_matplotlib_the_page_keeps_its_tables_and_says_how_to_get_plots(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    page = report_html.render({"s": EVERYTHING}, HEADER, HISTORY)
    assert "<img" not in page
    assert "pip install specdec[plot]" in page
    assert page.count("<tr class=") == len(EVERYTHING) and "<th>this run</th>" in page


def test_cells_are_escaped():
    hostile = row("pair[<b>x</b>,k=2,cpu,fp32,bs=1]", reason="<script>alert(1)</script>", outcome="skipped")
    page = report_html.render({"s": [hostile]}, {**HEADER, "machine_class": "<i>"})
    assert "<b>x</b>" not in page and "<script>alert" not in page and "<i>" not in page


# ---------------------------------------------------------------------------------------------- markdown
def test_markdown_puts_the_verdict_counts_and_regressions_first():
    text = report_md.render({"s": EVERYTHING}, HEADER)
    lines = text.splitlines()
    assert lines[0] == "## specdec benchmarks failed: s on test-machine"
    assert (
        lines[2].startswith("**1 REGRESSION**, ")
        and "1 skipped" in lines[2]
        and f"{len(EVERYTHING) - 2} pass" in lines[2]
    )
    regressions = lines.index("### Regressions")
    assert lines[regressions + 2] == (
        "- `s` `pair[model,k=8,cpu,fp32,bs=1]`: speedup: baseline 1.5, now 0.7, tolerance -35% (fails below 0.975)"
    )
    table = [line for line in lines if line.startswith("| `")]
    assert table[0].startswith("| `pair[model,k=8,cpu,fp32,bs=1]` ") and table[0].endswith(
        "| **REGRESSION: speedup** |"
    )
    assert len(table) == len(EVERYTHING) and all(line.count(" | ") == len(summary.HEADERS) - 1 for line in table)
    assert "cuda is not available \\| here" in text  # a pipe cannot break the table or the list


def test_markdown_of_a_clean_run_says_passed():
    assert report_md.render({"s": [AR, *MODEL]}, HEADER).startswith("## specdec benchmarks passed: s on test-machine")


# ---------------------------------------------------------------------------------------------- a real browser
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
PROBE = """<script>
window.addEventListener("load", () => {
  const sizes = Array.from(document.images).map((image) => image.complete ? image.naturalWidth : -1);
  document.body.setAttribute("data-image-widths", sizes.join(","));
});
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")
def test_chromium_decodes_every_plot_of_the_page(tmp_path):
    pytest.importorskip("matplotlib")
    page = report_html.render({"s": EVERYTHING}, HEADER, HISTORY)
    probe = tmp_path / "probe.html"  # the page plus a test-only script that writes each image's decoded width
    probe.write_text(page.replace("</body>", PROBE), encoding="utf-8")
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    widths = re.search(r'data-image-widths="([^"]*)"', done.stdout)
    assert widths is not None, done.stdout[-2000:]
    decoded = [int(w) for w in widths.group(1).split(",")]
    assert len(decoded) == 5 and all(w > 300 for w in decoded), decoded
