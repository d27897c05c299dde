"""`analyze` reports: the per-layer table (or its ``--depth`` collapse), operators, JSON, CSV,
Markdown.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

from convcost.counting.analysis import CONVENTIONS, SCHEMA_VERSION, AnalysisReport, LayerRow, report_meta
from convcost.counting.counters import COUNTER_TEXT, FVCORE
from convcost.counting.passes import itemsize
from convcost.figures import timing_dict
from convcost.report.common import (
    CONVENTION_LINE,
    csv_cell,
    dims_label,
    has_tails,
    iqr_cell,
    json_text,
    lowering_cells,
    lowering_heads,
    lowering_note,
    lowers,
    md_table,
    pct,
    roof_cells,
    roofline_of,
    shape_str,
    source_cell,
    tail_cells,
    timing_cols,
    timing_lines,
    to_console_text,
)
from convcost.report.layout import Col, dropped_line, fit_table, rich_text
from convcost.timing.training import CONVENTION as TRAINING_CONVENTION
from convcost.units import fmt_bytes, fmt_ms, human

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text as RichText

    from convcost.figures import KernelTiming


def _timed(report: AnalysisReport) -> bool:
    return report.latency_ms is not None or any(r.latency_ms is not None for r in report.layers)


def _extra_backends(report: AnalysisReport) -> list[str]:
    """Backends after the first (whose figures are the rows' own latency fields)."""
    return list(report.backends)[1:]


def _primary_suffix(report: AnalysisReport) -> str:
    return f" {next(iter(report.backends))}" if len(report.backends) > 1 else ""


def _on(r: LayerRow, b: str) -> float | None:
    return r.backends[b].latency_ms if b in r.backends else None


MAX_TABLE_ROWS = 300  # beyond this, the table view is collapsed (unless --all)


def table_rows(report: AnalysisReport, depth: int | None,
               show_all: bool) -> tuple[list[LayerRow], str | None]:
    """The rows a table shows, and a note when it shows fewer than every layer: the hierarchy at
    the deepest level that fits in :data:`MAX_TABLE_ROWS` rows, or (a flat model) the largest
    layers by MACs, in order, and one row for the rest."""
    if depth is not None:
        return _collapse(report, depth), None
    rows = report.layers
    if show_all or len(rows) <= MAX_TABLE_ROWS:
        return rows, None
    fits = [d for d in range(1, 12) if len(_collapse(report, d)) <= MAX_TABLE_ROWS]
    deepest = max(fits) if fits else None
    if deepest is not None and len(_collapse(report, deepest)) > 1:
        out = _collapse(report, deepest)
        return out, (f"{len(rows)} layers shown as the module hierarchy at depth {deepest} "
                     f"({len(out)} rows); --depth N picks another level, --all lists every "
                     "layer (JSON, CSV and Markdown always do)")
    keep = set(sorted(range(len(rows)), key=lambda i: -rows[i].macs)[:MAX_TABLE_ROWS])
    shown = [r for i, r in enumerate(rows) if i in keep]
    rest = [r for i, r in enumerate(rows) if i not in keep]
    shown.append(LayerRow(name=f"({len(rest)} smaller layers)", op="", kind="", in_shape=None,
                          out_shape=None, params=sum(r.params for r in rest),
                          macs=sum(r.macs for r in rest)))
    return shown, (f"{len(rows)} layers: the {MAX_TABLE_ROWS} with the most MACs are listed in "
                   "order, the rest summed in one row; --all lists every layer (JSON, CSV and "
                   "Markdown always do)")


def analysis_renderables(report: AnalysisReport, *, depth: int | None = None,
                         show_all: bool = False, width: int | None = None) -> list[RenderableType]:
    """Rich renderables of an analysis: layer table (fitted to ``width``; None: every column),
    operator summary, warnings, conventions."""
    timed = _timed(report)
    inputs = report.inputs or ", ".join(f"{shape_str(s, batch=True)} ({dims_label(s)})"
                                        for s in report.input_shapes)
    rows, collapsed = table_rows(report, depth, show_all)
    tcols, roof, peaks = timing_cols(report.layers, timed, fmt_ms(report.latency_ms),
                                     label=f"latency{_primary_suffix(report)}")
    extra = _extra_backends(report) if timed else []
    tcols += [Col(f"latency {b}", "right", 74, fmt_ms(report.backends[b].latency_ms))
              for b in extra]
    cached = timed and any(source_cell(r.timing) for r in report.layers)
    tails = timed and has_tails(report.layers)
    cols = [Col("#", "right", 20), Col("layer", "left", 100, "total"), Col("op", "left", 45),
            Col("kind", "left", 55), Col("output", "right", 50), Col("groups", "right", 40),
            Col("params", "right", 85, human(report.params)),
            Col("MACs", "right", 100, human(report.macs)),
            Col("FLOPs", "right", 10, human(report.flops)),
            Col("%MACs", "right", 60, "100.0%" if report.macs else "-"),
            *_pass_cols(report), *tcols]
    if cached:
        cols.append(Col("source", "left", 25))
    cells_rows = []
    for i, r in enumerate(rows, 1):
        cells = [str(i), r.name, r.op, r.kind, shape_str(r.out_shape),
                 "" if r.groups is None else str(r.groups), human(r.params), human(r.macs),
                 human(r.flops), pct(r.macs, report.macs), *_pass_cells(report, r)]
        if timed:
            cells += [fmt_ms(r.latency_ms), iqr_cell(r.timing)]
            cells += tail_cells(r.timing) if tails else []
        if roof:
            cells += roof_cells(roofline_of(r.timing), peaks)
        cells += [_extra_cell(r, b) for b in extra]
        if cached:
            cells.append(source_cell(r.timing))
        cells_rows.append(cells)
    t, dropped = fit_table(cols, cells_rows, width=width, show_footer=True,
                           title=f"convcost analyze: {report.name}")
    out: list[RenderableType] = [
        t, rich_text(f"source {report.source}  |  input {inputs}  |  dtype {report.dtype}  |  "
                f"counter {report.counter}"), *dropped_line(dropped), operator_table(report)]
    if collapsed:
        out.append(rich_text(f"note: {collapsed}", style="yellow"))
    out.append(rich_text(pass_line(report)))
    if report.pass_name == "training":
        out.append(rich_text(f"pass {TRAINING_CONVENTION}"))
    out.extend(timing_lines(report.timing, report.device, report.latency_ms))
    out.extend(_backend_model_lines(report))
    out.extend(_warnings(report))
    out.append(rich_text(CONVENTION_LINE, style="dim"))
    return out


def _pass_cols(report: AnalysisReport) -> list[Col]:
    """bwd MACs (training), then weights, output and MAC in bytes (dropped first on narrow
    terminals)."""
    size = itemsize(report.dtype)
    acc = [r.memory(size)["access_bytes"] for r in report.layers]
    cols = []
    if report.pass_name == "training":
        cols.append(Col("bwd MACs", "right", 58, human(report.backward_macs)))
    peak = report.peak_activation_bytes
    return [*cols, Col("weights", "right", 14, fmt_bytes(report.params * size)),
            Col("output", "right", 13, f"peak {fmt_bytes(peak)}" if peak is not None else ""),
            Col("MAC", "right", 16, fmt_bytes(sum(a for a in acc if a)))]


def _pass_cells(report: AnalysisReport, r: LayerRow) -> list[str]:
    mem = r.memory(itemsize(report.dtype))
    cells = [human(r.backward_macs) if r.backward_macs is not None else ""] \
        if report.pass_name == "training" else []
    access = mem["access_bytes"]
    return [*cells, fmt_bytes(mem["weight_bytes"]) if r.params else "",
            fmt_bytes(mem["activation_bytes"]), fmt_bytes(access) if access is not None else ""]


def pass_line(report: AnalysisReport) -> str:
    """'pass inference | weights 44.7 MiB (fp32) | peak activation memory 12.1 MiB (forward,
    meta tensors)'; training adds the backward's MACs."""
    size = itemsize(report.dtype)
    parts = [f"pass {report.pass_name}", f"weights {fmt_bytes(report.params * size)} "
             f"({report.dtype})"]
    if report.peak_activation_bytes is not None:
        what = ("training forward: saved for the backward" if report.pass_name == "training"
                else "forward")
        parts.append(f"peak activation memory {fmt_bytes(report.peak_activation_bytes)} "
                     f"({what}; meta tensors)")
    if report.pass_name == "training":
        bwd = report.backward_macs
        parts.append(f"backward MACs {human(bwd)}" + (
            f" (forward + backward {human(report.macs + bwd)})" if bwd is not None else ""))
    return "  |  ".join(parts)


def _backend_model_lines(report: AnalysisReport) -> list[Any]:
    """'whole model on onnxruntime: 120 us (sum of the 2 conv/linear layers alone: 98 us)' for
    each backend after the first (the first's line is the footer's 'whole model')."""
    out = []
    for b in _extra_backends(report):
        d = report.backends[b]
        ms = d.latency_ms
        line = f"whole model on {b}: " + (fmt_ms(ms) if ms is not None else (
            "failed" if d.timing is not None and d.timing.error else "not measured"))
        if d.layers_sum_ms is not None:
            line += (f"; sum of the {d.layers_timed} conv/linear layers timed alone: "
                     f"{fmt_ms(d.layers_sum_ms)}")
        out.append(rich_text(line))
    return out + _lowering_lines(report)


MAX_LOWERING_NOTES = 8  # kernels named per backend; the rest counted


def _lowering_lines(report: AnalysisReport) -> list[Any]:
    """'executorch: not every node on its delegate: whole model XNNPACK 7/8 nodes (portable:
    aten.cumsum.default); conv1 ...': per backend, the kernels its delegate did not take whole
    (they ran partly on the portable kernels)."""
    out = []
    for b, d in report.backends.items():
        kernels = [("whole model", d.timing)] + [(r.name, r.backends[b].timing)
                                                 for r in report.layers if b in r.backends]
        notes = [f"{name} {note}" for name, t in kernels if (note := lowering_note(t))]
        if notes:
            more = len(notes) - MAX_LOWERING_NOTES
            out.append(rich_text(f"{b}: not every node on its delegate: "
                                 + "; ".join(notes[:MAX_LOWERING_NOTES])
                                 + (f"; and {more} more (JSON: timing.lowering)" if more > 0
                                    else ""), style="yellow"))
    return out


def _timing_on(r: LayerRow, b: str) -> KernelTiming | None:
    return r.backends[b].timing if b in r.backends else None


def _extra_cell(r: LayerRow, b: str) -> str:
    t = _timing_on(r, b)
    if _on(r, b) is None and t is not None and t.error:
        return "failed"
    return fmt_ms(_on(r, b))


def _collapse(report: AnalysisReport, depth: int) -> list[LayerRow]:
    """Module hierarchy cut at ``depth`` (0 = the whole model, 1 = top-level children, ...):
    the modules at that depth, and leaves above it. Linear in the number of modules."""
    parents = {n.name.rsplit(".", 1)[0] if "." in n.name else "" for n in report.hierarchy
               if n.name}
    rows = []
    for node in report.hierarchy:
        is_leaf_below = node.name not in parents
        if node.depth == depth or (node.depth < depth and is_leaf_below and node.name):
            rows.append(LayerRow(name=node.name or "(model)", op=node.type,
                                 kind="" if node.called else "(not called)", in_shape=None,
                                 out_shape=node.out_shape, params=node.params, macs=node.macs))
    rest_p = report.params - sum(r.params for r in rows)
    rest_m = report.macs - sum(r.macs for r in rows)
    if rows and (rest_p or rest_m):  # work in forward() bodies above the cut (functional ops)
        rows.append(LayerRow(name="(outside these modules)", op="", kind="", in_shape=None,
                             out_shape=None, params=rest_p, macs=rest_m))
    return rows or [LayerRow(name="(model)", op="", kind="", in_shape=None, out_shape=None,
                             params=report.params, macs=report.macs)]


def operator_table(report: AnalysisReport) -> Table:
    from rich import box
    from rich.table import Table

    t = Table(title="MACs by operator", box=box.SIMPLE_HEAD, title_justify="left")
    t.add_column("operator")
    t.add_column("MACs", justify="right")
    t.add_column("FLOPs", justify="right")
    t.add_column("%MACs", justify="right")
    for op, macs in report.by_operator.items():
        t.add_row(op, human(macs), human(2 * macs), pct(macs, report.macs))
    return t


def totals_lines(report: AnalysisReport) -> list[str]:
    """The two MAC conventions, labelled, and the parameters of modules that never ran."""
    lines = [f"MACs, all counted operators (fvcore's convention): {human(report.macs)}; "
             f"conv + linear + attention matmuls (the papers' and torchvision's): "
             f"{human(report.paper_macs)}"]
    if report.counter != FVCORE:
        lines.append(f"counter: {COUNTER_TEXT.get(report.counter, report.counter)}")
    if report.never_called:
        names = ", ".join(f"{n} ({human(p)})" for n, p in report.never_called[:6])
        more = f", +{len(report.never_called) - 6} more" if len(report.never_called) > 6 else ""
        lines.append(f"params in modules never called during the forward: "
                     f"{human(report.params_never_called)} of the {human(report.params)} "
                     f"({names}{more}); without them: "
                     f"{human(report.params - report.params_never_called)}")
    return lines


def _warnings(report: AnalysisReport) -> list[RichText]:
    out = [rich_text(x) for x in totals_lines(report)]
    if report.unsupported_ops:
        ops = ", ".join(f"{k} x{v}" for k, v in report.unsupported_ops.items())
        out.append(rich_text(f"warning: not counted (no formula; 0 MACs assumed): {ops}",
                        style="yellow"))
    for n in report.notes:
        out.append(rich_text(f"note: {n}", style="yellow"))
    return out


def _layer_dict(r: LayerRow, size: int = 4) -> dict[str, Any]:
    mem = r.memory(size)
    d: dict[str, Any] = {
        "name": r.name, "op": r.op, "kind": r.kind, "in_shape": r.in_shape,
        "out_shape": r.out_shape, "groups": r.groups, "params": r.params, "macs": r.macs,
        "flops": r.flops, "latency_ms": r.latency_ms, "weight_bytes": mem["weight_bytes"],
        "activation_bytes": mem["activation_bytes"], "access_bytes": mem["access_bytes"],
    }
    if r.kernel is not None:
        d.update(kernel=r.kernel, stride=r.stride, padding=r.padding, dilation=r.dilation,
                 bias=r.bias)
    if r.calls != 1:
        d["calls"] = r.calls
    if r.backward_macs is not None:
        d["backward_macs"] = r.backward_macs
    if r.timing is not None:
        d["timing"] = r.timing.to_dict()
        d["latency_p90_ms"] = r.timing.measurement.p90_ms
        d["latency_p99_ms"] = r.timing.measurement.p99_ms
    if r.backends:
        d["backends"] = {b: {"latency_ms": f.latency_ms, "timing": timing_dict(f.timing)}
                         for b, f in r.backends.items()}
    return d


def analysis_dict(report: AnalysisReport, depth: int | None = None) -> dict[str, Any]:
    """The JSON contract (docs/json.md), plus extra fields."""
    shapes = report.input_shapes
    d: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": report_meta(),
        "source": report.source,
        "name": report.name,
        "conventions": CONVENTIONS,
        "input_shape": shapes[0] if len(shapes) == 1 else shapes,
        "input_shapes": shapes,
        **({"inputs": report.inputs} if report.inputs else {}),
        "dtype": report.dtype,
        "counter": report.counter,
        "totals": {"params": report.params, "macs": report.macs, "flops": report.flops,
                   "latency_ms": report.latency_ms, "paper_macs": report.paper_macs,
                   "paper_flops": 2 * report.paper_macs,
                   "params_never_called": report.params_never_called,
                   **({"backward_macs": report.backward_macs,
                       "training_macs": None if report.backward_macs is None
                       else report.macs + report.backward_macs}
                      if report.pass_name == "training" else {})},
        "pass": report.pass_name,
        "memory": {"weight_bytes": report.params * itemsize(report.dtype),
                   "peak_activation_bytes": report.peak_activation_bytes,
                   "access_bytes": sum(m["access_bytes"] or 0 for m in
                                       (r.memory(itemsize(report.dtype)) for r in report.layers)),
                   "bytes_per_element": itemsize(report.dtype)},
        "never_called": [{"name": n, "params": p} for n, p in report.never_called],
        "by_operator": report.by_operator,
        "unsupported_ops": report.unsupported_ops,
        "layers": [_layer_dict(r, itemsize(report.dtype)) for r in report.layers],
        "notes": report.notes,
    }
    if depth is not None:  # the collapsed view too (``layers`` stays: the contract)
        d["depth"] = depth
        d["modules"] = [{"name": r.name, "type": r.op, "called": r.kind != "(not called)",
                         "out_shape": r.out_shape, "params": r.params, "macs": r.macs,
                         "flops": r.flops} for r in _collapse(report, depth)]
    if report.device is not None:
        d["device"] = report.device
    if report.timing is not None:
        d["timing"] = report.timing
    if report.backends:
        d["totals"]["backends"] = {b: {"latency_ms": v.latency_ms}
                                   for b, v in report.backends.items()}
        d["backends"] = {b: v.to_dict() for b, v in report.backends.items()}
    return d


_CSV_FIELDS = ["name", "op", "kind", "in_shape", "out_shape", "groups", "kernel", "stride",
               "padding", "dilation", "params", "macs", "flops", "latency_ms"]


_CSV_TRAIL = ["latency_p90_ms", "latency_p99_ms", "backward_macs", "weight_bytes",
              "activation_bytes", "access_bytes"]  # after the backends' columns


class _Padded:
    """A CSV writer whose rows are padded with empty cells to the header's width."""

    def __init__(self, w: Any, n: int) -> None:
        self.w, self.n = w, n

    def writerow(self, row: list[Any]) -> None:
        self.w.writerow([*row, *[""] * (self.n - len(row))])


def analysis_csv(report: AnalysisReport, depth: int | None = None) -> str:
    """One row per layer (per module of the hierarchy at ``depth`` when given), the totals in
    both conventions, the never-called modules and the not-counted operators."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = _extra_backends(report)
    rows = report.layers if depth is None else _collapse(report, depth)
    several = len(report.backends) > 1
    lowered = [b for b, m in report.backends.items()
               if lowers([m.timing, *(_timing_on(r, b) for r in rows)])]
    head = (_CSV_FIELDS + [f"latency_ms:{b}" for b in extra] + _CSV_TRAIL
            + [h for b in lowered for h in lowering_heads(b if several else None)])
    w.writerow(head)
    for r in rows:
        d = _layer_dict(r, itemsize(report.dtype))
        w.writerow([csv_cell(d.get(f)) for f in _CSV_FIELDS]
                   + [csv_cell(_on(r, b)) for b in extra]
                   + [csv_cell(d.get(f)) for f in _CSV_TRAIL]
                   + [c for b in lowered for c in lowering_cells(_timing_on(r, b))])
    w = _Padded(w, len(head))
    w.writerow(["total", "", "", "", "", "", "", "", "", "", report.params, report.macs,
                report.flops, csv_cell(report.latency_ms)]
               + [csv_cell(report.backends[b].latency_ms) for b in extra]
               + [""] * len(_CSV_TRAIL)  # the whole model's lowering beside its latency
               + [c for b in lowered for c in lowering_cells(report.backends[b].timing)])
    w.writerow(["total (conv + linear + attention: papers' convention)", "", "", "", "", "", "",
                "", "", "", report.params, report.paper_macs, 2 * report.paper_macs, ""])
    for n, p in report.never_called:
        w.writerow([n, "", "never called", "", "", "", "", "", "", "", p, 0, 0, ""])
    for op, count in report.unsupported_ops.items():
        w.writerow([op, "not counted", f"{count} call(s)", "", "", "", "", "", "", "", "", "", "",
                    ""])
    return buf.getvalue()


def analysis_markdown(report: AnalysisReport, depth: int | None = None) -> str:
    timed = _timed(report)
    inputs = ", ".join(shape_str(s, batch=True) for s in report.input_shapes)
    headers = ["#", "layer", "op", "kind", "output", "groups", "params", "MACs", "FLOPs", "%MACs"]
    align = "rlllrrrrrr"
    extra = _extra_backends(report) if timed else []
    if timed:
        headers += [f"latency{_primary_suffix(report)}", *[f"latency {b}" for b in extra]]
        align += "r" * (1 + len(extra))
    rows = []
    for i, r in enumerate(report.layers if depth is None else _collapse(report, depth), 1):
        row = [str(i), f"`{r.name}`", r.op, r.kind, shape_str(r.out_shape),
               "" if r.groups is None else str(r.groups), human(r.params), human(r.macs),
               human(r.flops), pct(r.macs, report.macs)]
        if timed:
            row += [fmt_ms(r.latency_ms), *[_extra_cell(r, b) for b in extra]]
        rows.append(row)
    total = ["", "**total**", "", "", "", "", f"**{human(report.params)}**",
             f"**{human(report.macs)}**", f"**{human(report.flops)}**", "100.0%"]
    if timed:
        total += [f"**{fmt_ms(report.latency_ms)}**",
                  *[f"**{fmt_ms(report.backends[b].latency_ms)}**" for b in extra]]
    rows.append(total)
    dims = "" if report.inputs else f" ({', '.join(dims_label(x) for x in report.input_shapes)})"
    parts = [f"## convcost analyze: {report.name}", "",
             f"Source `{report.source}`, input {report.inputs or inputs}{dims}, dtype {report.dtype}, "
             f"counter {report.counter}.", "", md_table(headers, rows, align), "",
             "### MACs by operator", "",
             md_table(["operator", "MACs", "FLOPs", "%MACs"],
                      [[k, human(v), human(2 * v), pct(v, report.macs)]
                       for k, v in report.by_operator.items()], "lrrr")]
    for w in [*timing_lines(report.timing, report.device, report.latency_ms),
              *_backend_model_lines(report), *_warnings(report)]:
        parts += ["", f"> {w.plain}"]
    parts += ["", f"_{CONVENTION_LINE}_", ""]
    return "\n".join(parts)


def render_analysis(report: AnalysisReport, fmt: str, *, width: int | None = None,
                    depth: int | None = None, show_all: bool = False) -> str:
    """The report as text in ``fmt`` (table text is colourless, for files and tests)."""
    if fmt == "json":
        return json_text(analysis_dict(report, depth=depth)) + "\n"
    if fmt == "csv":
        return analysis_csv(report, depth=depth)
    if fmt == "markdown":
        return analysis_markdown(report, depth=depth)
    return to_console_text(analysis_renderables(report, depth=depth, show_all=show_all,
                                                width=width), width)


