"""Sweeps (``--batch 1,8,32``, ``--threads 1,2``): one full report per point, and a summary
that sets each row's figures side by side across the points (the latency ratio per batch for
compare). Table, JSON, CSV and Markdown; the plot draws the ratio against the batch."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from convcost.report.common import json_text, md_table
from convcost.report.layout import Col, fit_table, rich_text
from convcost.units import fmt_bytes, fmt_ms, fmt_ratio, human

if TYPE_CHECKING:
    from rich.console import RenderableType


@dataclass
class SweepPoint:
    """One point of a sweep: its batch size and thread count (None: as the command's default)
    and the report (AnalysisReport or CompareReport) and timing run measured there."""

    batch: int | None
    threads: int | None
    report: Any
    run: Any = None

    @property
    def label(self) -> str:
        parts = []
        if self.batch is not None:
            parts.append(f"batch {self.batch}")
        if self.threads is not None:
            parts.append(f"{self.threads} thread{'s' if self.threads != 1 else ''}")
        return ", ".join(parts) or "default"


@dataclass
class SweepReport:
    command: str  # analyze | compare
    points: list[SweepPoint]

    @property
    def name(self) -> str:
        """The report's name without the batch it was taken at (the sweep varies it)."""
        import re

        return re.sub(r",? batch \d+$", "", self.points[0].report.name)


def _compare_rows(report: Any) -> list[Any]:
    """The rows a compare summary follows: the whole-model rows, else the layer's rows."""
    if report.is_model:
        return [report.model_baseline, *report.model_rows]
    return list(report.layers[0].all_rows)


def summary_rows(sweep: SweepReport) -> list[dict[str, Any]]:
    """One dict per (row, point): label, batch, threads, MACs, latency (ms), latency per
    sample (ms / batch), the paired latency ratio and interval (compare), memory."""
    out: list[dict[str, Any]] = []
    for p in sweep.points:
        r = p.report
        rows = _compare_rows(r) if sweep.command == "compare" else [r]
        for row in rows:
            lat = row.latency_ms
            batch = p.batch or _batch_of(r)
            d: dict[str, Any] = {
                "row": row.label if sweep.command == "compare" else "(model)",
                "batch": batch, "threads": p.threads or _threads_of(r), "macs": row.macs,
                "latency_ms": lat,
                "latency_per_sample_ms": lat / batch if lat is not None and batch else None}
            d["busy"] = _busy(row, sweep.command)
            if sweep.command == "compare":
                d["latency_ratio"] = row.ratio_latency
                d["latency_ratio_ci"] = list(row.latency_ci) if row.latency_ci else None
                d["macs_ratio"] = row.ratio_macs
            else:
                d["peak_activation_bytes"] = r.peak_activation_bytes
            out.append(d)
    return out


def _busy(row: Any, command: str) -> bool | None:
    """Whether the row's figure (compare) or the whole model's (analyze) was measured while
    the machine was busy; None when not timed."""
    if command == "compare":
        return bool(row.figure.busy) if row.timing is not None else None
    first = next(iter(row.backends.values()), None)
    return bool(first.timing.busy) if first is not None and first.timing is not None else None


def _batch_of(report: Any) -> int | None:
    dev = report.device or {}
    return dev.get("batch")


def _threads_of(report: Any) -> int | None:
    dev = report.device or {}
    return dev.get("threads")


def sweep_dict(sweep: SweepReport, one: Any) -> dict[str, Any]:
    """The JSON: the summary and each point's full report (``one(report)`` its dict)."""
    return {"sweep": {"command": sweep.command,
                      "batches": sorted({p.batch for p in sweep.points if p.batch is not None}),
                      "threads": sorted({p.threads for p in sweep.points
                                         if p.threads is not None})},
            "summary": summary_rows(sweep),
            "points": [{"batch": p.batch, "threads": p.threads, "report": one(p.report)}
                       for p in sweep.points]}


def _cells(d: dict[str, Any], command: str) -> list[str]:
    mark = " busy" if d["busy"] and command == "analyze" else ""
    cells = [d["row"], str(d["batch"] or ""), str(d["threads"] or ""), human(d["macs"]),
             fmt_ms(d["latency_ms"]) + mark, fmt_ms(d["latency_per_sample_ms"])]
    if command == "compare":
        ci = d["latency_ratio_ci"]
        ratio = fmt_ratio(d["latency_ratio"])
        cells += [fmt_ratio(d["macs_ratio"]),
                  (f"{ratio} [{ci[0]:.3g}, {ci[1]:.3g}]" if ci and ci != [1.0, 1.0] else ratio)
                  + (" busy" if d["busy"] else "")]
    else:
        cells.append(fmt_bytes(d["peak_activation_bytes"]))
    return cells


def _headers(command: str) -> list[str]:
    h = ["row", "batch", "threads", "MACs", "latency", "per sample"]
    return h + (["MACs ratio", "latency ratio"] if command == "compare" else ["peak act."])


def sweep_renderables(sweep: SweepReport, each: Any,
                      width: int | None = None) -> list[RenderableType]:
    """Each point's report (``each(report, width)`` its renderables) under a heading, then the
    summary table."""
    out: list[RenderableType] = []
    for p in sweep.points:
        out.append(rich_text(f"=== {p.label} ===", style="bold"))
        out.extend(each(p.report, width))
        out.append(rich_text(""))
    rows = summary_rows(sweep)
    order: dict[str, int] = {}
    for d in rows:
        order.setdefault(d["row"], len(order))
    rows.sort(key=lambda d: (order[d["row"]], d["threads"] or 0, d["batch"] or 0))
    cols = [Col(h, "left" if i == 0 else "right", 100 - i) for i, h in
            enumerate(_headers(sweep.command))]
    t, _ = fit_table(cols, [_cells(d, sweep.command) for d in rows], width=width,
                     title=f"convcost {sweep.command} sweep: {sweep.name}")
    out.append(t)
    out.append(rich_text("per sample: latency / batch; each point is measured on its own "
                         "(its own kernels in the latency table); 'busy': measured while the "
                         "machine was busy (see that point's report)", style="dim"))
    return out


def sweep_csv(sweep: SweepReport) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    rows = summary_rows(sweep)
    keys = list(rows[0]) if rows else []
    w.writerow(keys)
    for d in rows:
        w.writerow(["" if d[k] is None else (" ".join(f"{x:.6g}" for x in d[k])
                                             if isinstance(d[k], list) else d[k]) for k in keys])
    return buf.getvalue()


def sweep_markdown(sweep: SweepReport, each: Any) -> str:
    rows = summary_rows(sweep)
    parts = [f"## convcost {sweep.command} sweep: {sweep.name}", "",
             md_table(_headers(sweep.command), [_cells(d, sweep.command) for d in rows],
                      "l" + "r" * (len(_headers(sweep.command)) - 1)), ""]
    for p in sweep.points:
        parts += [f"### {p.label}", "", each(p.report)]
    return "\n".join(parts)


def render_sweep(sweep: SweepReport, fmt: str, one_dict: Any, one_md: Any,
                 each: Any) -> str:
    """``fmt``: json (``one_dict`` per point), csv (the summary), markdown (``one_md`` per
    point), table (``each`` per point's renderables)."""
    from convcost.report.common import to_console_text

    if fmt == "json":
        return json_text(sweep_dict(sweep, one_dict)) + "\n"
    if fmt == "csv":
        return sweep_csv(sweep)
    if fmt == "markdown":
        return sweep_markdown(sweep, one_md)
    return to_console_text(sweep_renderables(sweep, each), None)
