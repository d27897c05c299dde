"""`cache` reports: the latency table as a rich table, JSON or CSV (the latency lookup table that
hardware-aware architecture search builds by hand). Rendering only."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

from convcost.counting.analysis import SCHEMA_VERSION, report_meta
from convcost.report.common import json_text
from convcost.report.layout import Col, dropped_line, fit_table, rich_text
from convcost.timing.table import PAIR_FIELDS
from convcost.units import fmt_ms

if TYPE_CHECKING:
    from rich.console import RenderableType

EXPORT_FIELDS = ("label", "scope", "in_shapes", "dtype", "memory_format", "backend", "cold",
                 "device", "device_name", "compute_capability", "driver", "torch", "cuda",
                 "cudnn", "onednn", "threads", "macs", "median_ms", "q1_ms", "q3_ms", "min_ms",
                 "max_ms", "n", "calls_per_sample", "converged", "graph_median_ms", "measured_at",
                 "convcost", "key", "p10_ms", "p90_ms", "p99_ms", "pass", "backend_id",
                 "delegate", "delegated_nodes", "portable_nodes", "portable_ops")


def _shapes(v: Any) -> str:
    return ", ".join("x".join(str(d) for d in s) for s in v) if v else ""


def cache_renderables(rows: list[dict[str, Any]], path: str, pairs: int,
                      width: int | None = None) -> list[RenderableType]:
    cols = [Col("measured", "left", 40), Col("device", "left", 50), Col("dtype", "left", 60),
            Col("threads", "right", 30), Col("kernel", "left", 100), Col("input", "left", 80),
            Col("median", "right", 100), Col("±IQR", "right", 45), Col("n", "right", 20)]
    backends = any((r.get("backend") or "eager") != "eager" for r in rows)
    if backends:  # a column only when some figure is not eager's
        cols.insert(3, Col("backend", "left", 70))
    cells = []
    for r in rows:
        med, q1, q3 = r.get("median_ms"), r.get("q1_ms"), r.get("q3_ms")
        iqr = f"{100 * (q3 - q1) / med:.1f}%" if med and q1 is not None and q3 is not None else ""
        cells.append([(r.get("measured_at") or "")[:10], str(r.get("device_name") or ""),
                      f"{r.get('dtype')}{' cl' if r.get('memory_format') == 'channels_last' else ''}",
                      str(r.get("threads") or ""), str(r.get("label") or ""),
                      _shapes(r.get("in_shapes")), fmt_ms(med),
                      iqr + ("" if r.get("converged") else "!"), str(r.get("n") or "")])
        if backends:  # the readable id (version, provider or delegate, threads) when stored
            cells[-1].insert(3, str(r.get("backend_id") or r.get("backend") or "eager"))
    t, dropped = fit_table(cols, cells, width=width, title=f"convcost latency table: {path}")
    return [t, *dropped_line(dropped),
            rich_text(f"{len(rows)} measurement(s) and {pairs} paired ratio(s); `convcost cache export "
                 "FILE.csv|FILE.json` writes them, `convcost cache clear` empties the table",
                 style="dim")]


def cache_json(rows: list[dict[str, Any]], path: str,
               pairs: list[dict[str, Any]] | None = None) -> str:
    doc = {"schema_version": SCHEMA_VERSION, "tool": report_meta(), "latency_table": path,
           "conventions": {"median_ms": "median wall time per call in milliseconds",
                           "in_shapes": "input shapes with the batch dimension",
                           "macs": "multiply-adds per call (fvcore convention)",
                           "p10_ms": "tail percentiles of the samples (each the mean of "
                                     "calls_per_sample calls); null with too few samples",
                           "pass": "inference (one forward) or training (forward + backward); "
                                   "null: inference, stored by an older convcost",
                           "backend_id": "the runtime, its version, provider or delegate and "
                                         "threads; null: stored by an older convcost",
                           "delegated_nodes": "operator nodes a delegate (XNNPACK) ran; "
                                              "portable_nodes: left on the runtime's portable "
                                              "kernels (portable_ops); null: no delegate"},
           "measurements": [{**{f: r.get(f) for f in EXPORT_FIELDS},
                             "signature": r.get("signature")} for r in rows],
           "pairs": [{f: p.get(f) for f in PAIR_FIELDS} for p in pairs or []]}
    return json_text(doc) + "\n"


def cache_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EXPORT_FIELDS)
    for r in rows:
        w.writerow(["" if r.get(f) is None else (_shapes(r[f]) if f == "in_shapes" else r[f])
                    for f in EXPORT_FIELDS])
    return buf.getvalue()
