"""The one place that turns results into text: tables, JSON and CSV (plots live in `specdec.plots`)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tabulate import tabulate

from specdec.metrics import RunMetrics, percentile


def fmt(value: Any, digits: int = 3) -> str:
    """A cell: floats rounded, None as '-', bytes-like counts left to the caller."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str], digits: int = 3) -> str:
    return tabulate([[fmt(v, digits) for v in row] for row in rows], headers=list(headers), tablefmt="simple")


def milliseconds(seconds: float | None) -> float | None:
    return seconds * 1000.0 if seconds is not None else None


def positions(rates: Sequence[float | None]) -> str:
    """Acceptance per draft position as one cell: ``0.82 0.71 0.55`` ('-' where no step reached a position)."""
    return " ".join(fmt(rate, 2) for rate in rates) or "-"


def synthetic_note(synthetic: Mapping[str, Any]) -> str:
    """What a synthetic run's report says about its output: ``synthetic acceptance (acceptance_rate=0.8): NOT
    lossless, ...``."""
    (name, value), *_ = synthetic.items()
    shown = ",".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"
    return (
        f"synthetic acceptance ({name}={shown}): NOT lossless; acceptance was forced, so the output is not the "
        "target's (it measures cost at that acceptance)"
    )


def row_latency(latencies: Sequence[float]) -> str:
    """The median and the slowest of a batch's row latencies (seconds), or "-" without any."""
    if not latencies:
        return "-"
    return f"{fmt(percentile(latencies, 50))} / {fmt(max(latencies))}"


def metrics_table(metrics: RunMetrics) -> str:
    """The run metrics that matter to a reader, one per line."""
    mib = 1024 * 1024
    peak = metrics.peak_device_memory_bytes
    rows = [
        ("target", metrics.target),
        ("draft", f"{metrics.draft} ({metrics.draft_method})" if metrics.draft else "(none: autoregressive)"),
        ("device / dtype", f"{metrics.device} / {metrics.dtype}"),
        ("decoder path / verifier", f"{metrics.decoder_path} / {metrics.verifier_backend}"),
        ("policy, K", f"{metrics.policy}, " + ("adaptive" if metrics.adaptive_k else str(metrics.k))),
        *([("output", synthetic_note(metrics.synthetic))] if metrics.synthetic is not None else []),
        ("new tokens", metrics.new_tokens),
        ("drafted per step", metrics.mean_drafted),
        ("acceptance rate", metrics.acceptance_rate),
        ("acceptance by draft position", positions(metrics.acceptance_by_position)),
        ("tokens per target forward", metrics.mean_tokens_per_forward),
        ("mean accepted length (tau)", metrics.mean_accepted_length),
        ("tokens/s", metrics.tokens_per_second),
        ("time to first token (s)", metrics.time_to_first_token_s),
        ("time per output token (ms)", milliseconds(metrics.tpot_s)),
        (
            "inter-token latency p50 / p90 / p99 (ms)",
            " / ".join(fmt(milliseconds(v), 2) for v in (metrics.itl_p50_s, metrics.itl_p90_s, metrics.itl_p99_s)),
        ),
        *([("row latency p50 / max (s)", row_latency(metrics.row_latency_s))] if metrics.batch_size > 1 else []),
        ("target / draft forwards", f"{metrics.target_forwards} / {metrics.draft_forwards}"),
        ("peak memory (MiB)", (peak if peak is not None else metrics.peak_rss_bytes) / mib),
    ]
    return tabulate([(k, fmt(v)) for k, v in rows], tablefmt="plain")


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of dicts as CSV; the header is the union of keys in first-seen order. A list or mapping value is written
    as JSON (``[0.9, 0.75]``), None as an empty cell."""
    fields: dict[str, None] = {}
    for row in rows:
        fields.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {key: json.dumps(value) if isinstance(value, (list, tuple, dict)) else value for key, value in row.items()}
        for row in rows
    )
    return out.getvalue()
