"""Rendering only: rich tables, JSON, CSV and Markdown for analysis and comparison reports.

Human units (k, M, G) in tables and Markdown; exact integers in JSON and CSV.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from convcost.analysis import CONVENTIONS, SCHEMA_VERSION, AnalysisReport, LayerRow, report_meta
from convcost.units import fmt_ms, fmt_ratio, human

FORMATS = ("table", "json", "csv", "markdown")
CONVENTION_LINE = ("MACs: one fused multiply-add each (fvcore's 'flop'); FLOPs = 2 x MACs; "
                   "params: trainable parameters, buffers excluded; bias adds params, no MACs.")


def shape_str(shape: list[int] | None, batch: bool = False) -> str:
    """``[1, 64, 56, 56]`` -> ``64x56x56`` (the batch dimension dropped unless ``batch``)."""
    if not shape:
        return "-"
    dims = shape if batch or len(shape) < 2 else shape[1:]
    return "x".join(str(d) for d in dims)


def pct(part: int | float, whole: int | float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def to_console_text(renderables: Iterable[RenderableType], width: int = 160) -> str:
    """Render rich objects to plain text (no colour, fixed width): files and golden tests."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False,
                      legacy_windows=False, soft_wrap=False)
    for r in renderables:
        console.print(r)
    return console.file.getvalue()


# --------------------------------------------------------------------------- analyze


def _timed(report: AnalysisReport) -> bool:
    return report.latency_ms is not None or any(r.latency_ms is not None for r in report.layers)


def analysis_renderables(report: AnalysisReport, *, depth: int | None = None) -> list[RenderableType]:
    """Rich renderables of an analysis: layer table, operator summary, warnings, conventions."""
    timed = _timed(report)
    inputs = ", ".join(shape_str(s, batch=True) for s in report.input_shapes)
    t = Table(title=f"convcost analyze: {report.name}", box=box.SIMPLE_HEAD, show_footer=True,
              caption=f"source {report.source}  |  input {inputs} (BxCxHxW)  |  dtype "
                      f"{report.dtype}  |  counter {report.counter}",
              caption_justify="left", title_justify="left")
    t.add_column("#", justify="right", footer="")
    t.add_column("layer", footer="total")
    t.add_column("op")
    t.add_column("kind")
    t.add_column("output", justify="right")
    t.add_column("groups", justify="right")
    t.add_column("params", justify="right", footer=human(report.params))
    t.add_column("MACs", justify="right", footer=human(report.macs))
    t.add_column("FLOPs", justify="right", footer=human(report.flops))
    t.add_column("%MACs", justify="right", footer="100.0%" if report.macs else "-")
    roof, peaks = _add_timing_columns(t, report.layers, timed, fmt_ms(report.latency_ms))
    rows = report.layers
    if depth is not None:
        rows = _collapse(report, depth)
    for i, r in enumerate(rows, 1):
        cells = [str(i), r.name, r.op, r.kind, shape_str(r.out_shape),
                 "" if r.groups is None else str(r.groups), human(r.params), human(r.macs),
                 human(r.flops), pct(r.macs, report.macs)]
        if timed:
            cells += [fmt_ms(r.latency_ms), _iqr_cell(r.timing)]
        if roof:
            cells += _roof_cells((r.timing or {}).get("roofline"), peaks)
        t.add_row(*cells)
    out: list[RenderableType] = [t, operator_table(report)]
    out.extend(_timing_lines(report.timing, report.device, report.latency_ms))
    out.extend(_warnings(report))
    out.append(Text(CONVENTION_LINE, style="dim"))
    return out


def _collapse(report: AnalysisReport, depth: int) -> list[LayerRow]:
    """Module hierarchy cut at ``depth`` (0 = the whole model, 1 = top-level children, ...)."""
    rows = []
    for node in report.hierarchy:
        is_leaf_below = not any(
            n.name.startswith(node.name + ".") for n in report.hierarchy if node.name)
        if node.depth == depth or (node.depth < depth and is_leaf_below and node.name):
            rows.append(LayerRow(name=node.name or "(model)", op=node.type, kind="",
                                 in_shape=None, out_shape=node.out_shape, params=node.params,
                                 macs=node.macs))
    rest_p = report.params - sum(r.params for r in rows)
    rest_m = report.macs - sum(r.macs for r in rows)
    if rows and (rest_p or rest_m):  # work in forward() bodies above the cut (functional ops)
        rows.append(LayerRow(name="(outside these modules)", op="", kind="", in_shape=None,
                             out_shape=None, params=rest_p, macs=rest_m))
    return rows or [LayerRow(name="(model)", op="", kind="", in_shape=None, out_shape=None,
                             params=report.params, macs=report.macs)]


def operator_table(report: AnalysisReport) -> Table:
    t = Table(title="MACs by operator", box=box.SIMPLE_HEAD, title_justify="left")
    t.add_column("operator")
    t.add_column("MACs", justify="right")
    t.add_column("FLOPs", justify="right")
    t.add_column("%MACs", justify="right")
    for op, macs in report.by_operator.items():
        t.add_row(op, human(macs), human(2 * macs), pct(macs, report.macs))
    return t


def _add_timing_columns(t: Table, rows: list[Any], timed: bool,
                        latency_footer: str = "") -> tuple[bool, bool]:
    """Add latency/IQR columns (when timed), achieved TFLOP/s and GB/s (when any row has a
    roofline) and % of bound / bound kind (when calibrated peaks exist). Returns (roof, peaks)."""
    roof = timed and any((r.timing or {}).get("roofline") for r in rows)
    peaks = roof and any("bound" in (r.timing or {}).get("roofline", {}) for r in rows)
    if timed:
        t.add_column("latency", justify="right", footer=latency_footer)
        t.add_column("±IQR", justify="right")
    if roof:
        t.add_column("TFLOP/s", justify="right")
        t.add_column("GB/s", justify="right")
    if peaks:
        t.add_column("% bound", justify="right")
        t.add_column("bound")
    return roof, peaks


def _iqr_cell(timing: dict[str, Any] | None) -> str:
    m = (timing or {}).get("measurement")
    if not m or m.get("rel_iqr") is None:
        return "failed" if (timing or {}).get("error") or (m or {}).get("error") else ""
    flag = "" if m.get("converged") else "!"
    return f"{100 * m['rel_iqr']:.1f}%{flag}"


def _roof_cells(rl: dict[str, Any] | None, with_peaks: bool) -> list[str]:
    if not rl:
        return ["", ""] + (["", ""] if with_peaks else [])
    cells = [f"{rl['achieved_tflops']:.3g}", f"{rl['achieved_gbs']:.3g}"]
    if with_peaks:
        cells += [f"{rl['pct_of_bound']:.0f}%" if "pct_of_bound" in rl else "",
                  rl.get("bound", "")]
    return cells


def _timing_lines(timing: dict[str, Any] | None, device: dict[str, Any] | None,
                  model_ms: float | None) -> list[Text]:
    """Footer lines of a timed report: device fingerprint, model vs per-layer sum, problems."""
    from convcost.device import fingerprint_line

    if not timing:
        return []
    out = []
    if device:
        out.append(Text(f"device: {fingerprint_line(device)}", style="dim"))
    m = timing.get("model")
    if m and m.get("median_ms") is not None:
        line = (f"whole model: {fmt_ms(m['median_ms'])} median (IQR {fmt_ms(m['iqr_ms'])}, "
                f"n={m['n']})")
        if timing.get("layers_sum_ms") is not None:
            line += (f"; sum of the {timing['layers_timed']} conv/linear layers timed alone: "
                     f"{fmt_ms(timing['layers_sum_ms'])}")
        out.append(Text(line))
    elif isinstance(timing.get("layers_sum_ms"), dict):
        sums = ", ".join(f"{k} {fmt_ms(v)}" for k, v in timing["layers_sum_ms"].items())
        out.append(Text(f"sum of the selected convs timed alone: {sums}"))
    if not timing.get("roofline_peaks"):
        out.append(Text("note: no roofline peaks for this device; run `convcost calibrate` to add "
                        "% of bound and memory/compute-bound labels", style="dim"))
    unc = timing.get("unconverged", [])
    if len(unc) > 3:
        out.append(Text(f"warning: {len(unc)} measurements did not converge within the time cap "
                        f"(IQR/median above the {100 * timing.get('rel_iqr_target', 0):.0f}% target; "
                        "marked '!'): a noisy machine, or raise --max-time", style="yellow"))
    else:
        for u in unc:
            out.append(Text(f"warning: did not converge within the time cap: {u}", style="yellow"))
    for f in timing.get("failures", []):
        out.append(Text(f"error: failed: {f}", style="red"))
    if timing.get("interrupted"):
        miss = timing.get("missing", [])
        out.append(Text(f"interrupted: {len(miss)} measurement(s) not taken"
                        + (f" ({', '.join(miss[:5])}{', ...' if len(miss) > 5 else ''})" if miss else ""),
                        style="red"))
    return out


def _warnings(report: AnalysisReport) -> list[Text]:
    out = []
    if report.unsupported_ops:
        ops = ", ".join(f"{k} x{v}" for k, v in report.unsupported_ops.items())
        out.append(Text(f"warning: not counted by {report.counter} (0 MACs assumed): {ops}",
                        style="yellow"))
    for n in report.notes:
        out.append(Text(f"note: {n}", style="yellow"))
    return out


def _layer_dict(r: LayerRow) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": r.name, "op": r.op, "kind": r.kind, "in_shape": r.in_shape,
        "out_shape": r.out_shape, "groups": r.groups, "params": r.params, "macs": r.macs,
        "flops": r.flops, "latency_ms": r.latency_ms,
    }
    if r.kernel is not None:
        d.update(kernel=r.kernel, stride=r.stride, padding=r.padding, dilation=r.dilation,
                 bias=r.bias)
    if r.calls != 1:
        d["calls"] = r.calls
    if r.timing is not None:
        d["timing"] = r.timing
    return d


def analysis_dict(report: AnalysisReport) -> dict[str, Any]:
    """The JSON contract of DESIGN.md section 5 (plus extra fields)."""
    shapes = report.input_shapes
    d: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": report_meta(),
        "source": report.source,
        "name": report.name,
        "conventions": CONVENTIONS,
        "input_shape": shapes[0] if len(shapes) == 1 else shapes,
        "input_shapes": shapes,
        "dtype": report.dtype,
        "counter": report.counter,
        "totals": {"params": report.params, "macs": report.macs, "flops": report.flops,
                   "latency_ms": report.latency_ms},
        "by_operator": report.by_operator,
        "unsupported_ops": report.unsupported_ops,
        "layers": [_layer_dict(r) for r in report.layers],
        "notes": report.notes,
    }
    if report.device is not None:
        d["device"] = report.device
    if report.timing is not None:
        d["timing"] = report.timing
    return d


_CSV_FIELDS = ["name", "op", "kind", "in_shape", "out_shape", "groups", "kernel", "stride",
               "padding", "dilation", "params", "macs", "flops", "latency_ms"]


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, list):
        return "x".join(str(x) for x in v)
    return v


def analysis_csv(report: AnalysisReport) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CSV_FIELDS)
    for r in report.layers:
        d = _layer_dict(r)
        w.writerow([_csv_cell(d.get(f)) for f in _CSV_FIELDS])
    w.writerow(["total", "", "", "", "", "", "", "", "", "", report.params, report.macs,
                report.flops, _csv_cell(report.latency_ms)])
    return buf.getvalue()


def md_table(headers: list[str], rows: list[list[str]], align: str) -> str:
    """A GitHub Markdown table; ``align`` is one of l/r per column."""
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def analysis_markdown(report: AnalysisReport) -> str:
    timed = _timed(report)
    inputs = ", ".join(shape_str(s, batch=True) for s in report.input_shapes)
    headers = ["#", "layer", "op", "kind", "output", "groups", "params", "MACs", "FLOPs", "%MACs"]
    align = "rlllrrrrrr"
    if timed:
        headers.append("latency")
        align += "r"
    rows = []
    for i, r in enumerate(report.layers, 1):
        row = [str(i), f"`{r.name}`", r.op, r.kind, shape_str(r.out_shape),
               "" if r.groups is None else str(r.groups), human(r.params), human(r.macs),
               human(r.flops), pct(r.macs, report.macs)]
        if timed:
            row.append(fmt_ms(r.latency_ms))
        rows.append(row)
    total = ["", "**total**", "", "", "", "", f"**{human(report.params)}**",
             f"**{human(report.macs)}**", f"**{human(report.flops)}**", "100.0%"]
    if timed:
        total.append(f"**{fmt_ms(report.latency_ms)}**")
    rows.append(total)
    parts = [f"## convcost analyze: {report.name}", "",
             f"Source `{report.source}`, input {inputs} (BxCxHxW), dtype {report.dtype}, "
             f"counter {report.counter}.", "", md_table(headers, rows, align), "",
             "### MACs by operator", "",
             md_table(["operator", "MACs", "FLOPs", "%MACs"],
                      [[k, human(v), human(2 * v), pct(v, report.macs)]
                       for k, v in report.by_operator.items()], "lrrr")]
    for w in [*_timing_lines(report.timing, report.device, report.latency_ms), *_warnings(report)]:
        parts += ["", f"> {w.plain}"]
    parts += ["", f"_{CONVENTION_LINE}_", ""]
    return "\n".join(parts)


def render_analysis(report: AnalysisReport, fmt: str, *, width: int = 160,
                    depth: int | None = None) -> str:
    """The report as text in ``fmt`` (table text is colourless, for files and tests)."""
    if fmt == "json":
        return json.dumps(analysis_dict(report), indent=2) + "\n"
    if fmt == "csv":
        return analysis_csv(report)
    if fmt == "markdown":
        return analysis_markdown(report)
    return to_console_text(analysis_renderables(report, depth=depth), width)


# --------------------------------------------------------------------------- compare

COMPARE_CONVENTIONS = {
    **CONVENTIONS,
    "ratio": "variant / baseline (the layer or model as it is); counted by fvcore on real modules",
    "analytic": "closed-form ratio of weights and MACs (bias excluded, as the papers count)",
    "latency_ratio": "measured median latency of the variant / of the baseline",
}


def _headline(row: Any) -> str:
    """'MACs x0.031, latency x6.4' (latency when measured)."""
    if row.skipped:
        return "skipped"
    parts = [f"MACs {fmt_ratio(row.ratio_macs)}"]
    if row.ratio_latency is not None:
        parts.append(f"latency {fmt_ratio(row.ratio_latency)}")
    return ", ".join(parts)


def _note(row: Any) -> str:
    if row.skipped:
        return f"skipped: {row.skipped}"
    notes = list(row.warnings)
    err = (row.timing or {}).get("error")
    if err:
        notes.insert(0, f"timing failed: {err}")
    g = ((row.timing or {}).get("measurement") or {}).get("graph_median_ms")
    if g is not None:
        notes.append(f"CUDA graph: {fmt_ms(g)}")
    return "; ".join(notes)


def _merged(rows: list[Any]) -> list[tuple[Any, str]]:
    """(row, label) with consecutive skipped rows of one variant and reason merged:
    'pointwise-grouped g=2,4,8' instead of three identical skip rows (JSON keeps them all)."""
    out: list[tuple[Any, str]] = []
    for r in rows:
        prev = out[-1][0] if out else None
        if (r.skipped and prev is not None and prev.skipped == r.skipped
                and prev.variant == r.variant and r.groups is not None):
            out[-1] = (prev, out[-1][1] + f",{r.groups}")
        else:
            out.append((r, r.label))
    return out


def _any_latency(report: Any) -> bool:
    rows = [r for lc in report.layers for r in [lc.baseline, *lc.rows]] + list(report.model_rows)
    return any(r.latency_ms is not None for r in rows)


def compare_renderables(report: Any, *, per_layer: bool = True) -> list[RenderableType]:
    """Rich tables: per-layer variant rows, then whole-model rows (for a SOURCE)."""
    timed = _any_latency(report)
    out: list[RenderableType] = []
    if per_layer or not report.is_model:
        title = (f"convcost compare: {report.name}" if not report.is_model
                 else f"convcost compare: {report.name}, per layer")
        t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left",
                  caption=f"source {report.source}  |  ratios to the layer as it is ('original')",
                  caption_justify="left")
        if report.is_model:
            t.add_column("layer")
        for col, j in (("variant", "left"), ("params", "right"), ("MACs", "right"),
                       ("FLOPs", "right"), ("params ratio", "right"), ("analytic", "right"),
                       ("formula", "left")):
            t.add_column(col, justify=j)
        roof, peaks = _add_timing_columns(
            t, [r for lc in report.layers for r in [lc.baseline, *lc.rows]], timed)
        t.add_column("headline")
        t.add_column("note", max_width=60)
        for lc in report.layers:
            if report.is_model:
                t.add_section()
            for r, label in _merged([lc.baseline, *lc.rows]):
                cells = [label, human(r.params), human(r.macs), human(r.flops),
                         fmt_ratio(r.ratio_params), fmt_ratio(r.analytic_macs), r.formula or ""]
                if report.is_model:
                    cells.insert(0, f"{lc.name} ({lc.layer.describe()})" if r is lc.baseline else "")
                if timed:
                    cells += [_latency_cell(r), _iqr_cell(r.timing)]
                if roof:
                    cells += _roof_cells((r.timing or {}).get("roofline"), peaks)
                cells += [_headline(r) if r is not lc.baseline else "baseline", _note(r)]
                t.add_row(*cells)
        out.append(t)
    if report.is_model:
        m = Table(title=f"convcost compare: {report.name}, whole model "
                        f"({len(report.layers)} selected convs substituted)",
                  box=box.SIMPLE_HEAD, title_justify="left",
                  caption="analytic: closed form over the selected convs only; ratios: the whole "
                          "model counted by fvcore", caption_justify="left")
        for col, j in (("variant", "left"), ("replaced", "right"), ("params", "right"),
                       ("MACs", "right"), ("params ratio", "right"), ("MACs ratio", "right"),
                       ("analytic (convs)", "right")):
            m.add_column(col, justify=j)
        if timed:
            m.add_column("latency", justify="right")
            m.add_column("±IQR", justify="right")
        m.add_column("headline")
        m.add_column("note")
        for r in [report.model_baseline, *report.model_rows]:
            cells = [r.label, "" if r.substituted is None else f"{r.substituted}/{len(report.layers)}",
                     human(r.params), human(r.macs), fmt_ratio(r.ratio_params),
                     fmt_ratio(r.ratio_macs), fmt_ratio(r.analytic_macs)]
            if timed:
                cells += [_latency_cell(r), _iqr_cell(r.timing)]
            cells += [_headline(r) if r is not report.model_baseline else "baseline", _note(r)]
            m.add_row(*cells)
        out.append(m)
    out.extend(_timing_lines(report.timing, report.device, None))
    for n in report.notes:
        out.append(Text(f"note: {n}", style="yellow"))
    out.append(Text(CONVENTION_LINE, style="dim"))
    out.append(Text("Ratios: variant / original; analytic: closed form (weights, bias excluded); "
                    "latency: median per call, ±IQR relative ('!' = did not converge).", style="dim"))
    return out


def _latency_cell(r: Any) -> str:
    if r.latency_ms is None:
        return "failed" if (r.timing or {}).get("error") else "-"
    return fmt_ms(r.latency_ms)


def _row_dict(r: Any) -> dict[str, Any]:
    d = {
        "layer": r.layer, "variant": r.variant, "groups": r.groups, "label": r.label,
        "params": r.params, "macs": r.macs, "flops": r.flops, "latency_ms": r.latency_ms,
        "ratio": {"params": r.ratio_params, "macs": r.ratio_macs, "latency": r.ratio_latency},
        "analytic": {"params": r.analytic_params, "macs": r.analytic_macs},
        "formula": r.formula, "paper": r.paper, "skipped": r.skipped, "warnings": r.warnings,
    }
    if r.timing is not None:
        d["timing"] = r.timing
    if r.substituted is not None:
        d["substituted"] = r.substituted
        d["kept"] = [{"layer": n, "reason": why} for n, why in r.kept]
    return d


def _layer_info(lc: Any) -> dict[str, Any]:
    L = lc.layer
    return {"name": lc.name, "in": L.cin, "out": L.cout, "kernel": list(L.kernel),
            "stride": list(L.stride), "padding": list(L.padding), "dilation": list(L.dilation),
            "groups": L.groups, "bias": L.bias, "input_shape": list(L.input_shape),
            "output_shape": list(L.output_shape)}


def compare_dict(report: Any) -> dict[str, Any]:
    """The compare JSON contract of DESIGN.md section 5 (plus extra fields)."""
    d: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "tool": report_meta(),
                         "source": report.source, "name": report.name,
                         "conventions": COMPARE_CONVENTIONS, "dtype": report.dtype}
    if not report.is_model:
        lc = report.layers[0]
        d["layer"] = _layer_info(lc)
        d["baseline"] = _row_dict(lc.baseline)
        d["variants"] = [_row_dict(r) for r in lc.rows]
    else:
        d["baseline"] = _row_dict(report.model_baseline)
        variants = []
        for r in report.model_rows:
            row = _row_dict(r)
            row["layers"] = [_row_dict(x) for lc in report.layers for x in lc.rows
                             if x.variant == r.variant and x.groups == r.groups]
            variants.append(row)
        d["variants"] = variants
        d["layers"] = [{**_layer_info(lc), "baseline": _row_dict(lc.baseline),
                        "variants": [_row_dict(x) for x in lc.rows]} for lc in report.layers]
    d["notes"] = report.notes
    if report.device is not None:
        d["device"] = report.device
    if report.timing is not None:
        d["timing"] = report.timing
    return d


_CMP_FIELDS = ["layer", "variant", "groups", "params", "macs", "flops", "ratio_params",
               "ratio_macs", "analytic_params", "analytic_macs", "formula", "latency_ms",
               "ratio_latency", "skipped", "warnings"]


def compare_csv(report: Any) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CMP_FIELDS)
    rows = [r for lc in report.layers for r in [lc.baseline, *lc.rows]]
    if report.is_model:
        rows += [report.model_baseline, *report.model_rows]
    for r in rows:
        w.writerow([_csv_cell(v) for v in (
            r.layer, r.variant, r.groups, r.params, r.macs, r.flops, r.ratio_params, r.ratio_macs,
            r.analytic_params, r.analytic_macs, r.formula, r.latency_ms, r.ratio_latency,
            r.skipped, "; ".join(r.warnings))])
    return buf.getvalue()


def compare_markdown(report: Any) -> str:
    timed = _any_latency(report)
    parts = [f"## convcost compare: {report.name}", "", f"Source `{report.source}`. Ratios are "
             "variant / original; analytic is the closed form (weights, bias excluded).", ""]
    headers = ["layer", "variant", "params", "MACs", "params ratio", "MACs ratio", "analytic",
               "formula"] + (["latency", "latency ratio"] if timed else []) + ["note"]
    rows = []
    for lc in report.layers:
        for r, label in _merged([lc.baseline, *lc.rows]):
            row = [f"`{lc.name}`" if report.is_model else "layer", label, human(r.params),
                   human(r.macs), fmt_ratio(r.ratio_params), fmt_ratio(r.ratio_macs),
                   fmt_ratio(r.analytic_macs), r.formula or ""]
            if timed:
                row += [_latency_cell(r), fmt_ratio(r.ratio_latency)]
            rows.append([*row, _note(r)])
    parts.append(md_table(headers, rows, "llrrrrrl" + ("rr" if timed else "") + "l"))
    if report.is_model:
        mh = ["variant", "replaced", "params", "MACs", "params ratio", "MACs ratio",
              "analytic (convs)"] + (["latency", "latency ratio"] if timed else []) + ["note"]
        mrows = []
        for r in [report.model_baseline, *report.model_rows]:
            row = [r.label, "" if r.substituted is None else f"{r.substituted}/{len(report.layers)}",
                   human(r.params), human(r.macs), fmt_ratio(r.ratio_params),
                   fmt_ratio(r.ratio_macs), fmt_ratio(r.analytic_macs)]
            if timed:
                row += [_latency_cell(r), fmt_ratio(r.ratio_latency)]
            mrows.append([*row, _note(r)])
        parts += ["", "### Whole model", "", md_table(mh, mrows, "lrrrrrr" + ("rr" if timed else "") + "l")]
    for w in _timing_lines(report.timing, report.device, None):
        parts += ["", f"> {w.plain}"]
    for n in report.notes:
        parts += ["", f"> note: {n}"]
    parts += ["", f"_{CONVENTION_LINE}_", ""]
    return "\n".join(parts)


def render_compare(report: Any, fmt: str, *, width: int = 160, per_layer: bool = True) -> str:
    if fmt == "json":
        return json.dumps(compare_dict(report), indent=2) + "\n"
    if fmt == "csv":
        return compare_csv(report)
    if fmt == "markdown":
        return compare_markdown(report)
    return to_console_text(compare_renderables(report, per_layer=per_layer), width)


# --------------------------------------------------------------------------- check (budgets)

_VERDICT_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim",
                  "error": "red"}


def _limit_text(r: Any) -> str:
    from convcost.budget import fmt_metric

    if r.limit is None:
        return "-"
    if r.kind == "regression":
        thr = f" = {fmt_metric(r.metric, r.threshold)}" if r.threshold is not None else ""
        return f"{r.limit.level} baseline {r.limit.text}{thr}"
    value = r.threshold if r.threshold is not None else r.limit.value
    return f"{r.limit.level} {fmt_metric(r.metric, value)}"


def budget_renderables(report: Any) -> list[RenderableType]:
    from convcost.budget import fmt_metric

    t = Table(title=f"convcost check: {report.budget}", box=box.SIMPLE_HEAD, title_justify="left")
    for col, j in (("check", "left"), ("metric", "left"), ("scope", "left"), ("actual", "right"),
                   ("limit", "left"), ("headroom", "right"), ("verdict", "left")):
        t.add_column(col, justify=j)
    for r in report.results:
        h = r.headroom_pct()
        t.add_row(r.check, r.metric + (" (regression)" if r.kind == "regression" else ""), r.scope,
                  fmt_metric(r.metric, r.actual), _limit_text(r),
                  "" if h is None else (f"{h:.1f}% left" if h >= 0 else f"{-h:.1f}% over"),
                  Text(r.verdict.upper(), style=_VERDICT_STYLE[r.verdict]))
    out: list[RenderableType] = [t]
    for r in report.results:
        if r.verdict in ("fail", "warn"):
            out.append(Text(r.message, style=_VERDICT_STYLE[r.verdict]))
        elif r.verdict == "skip":
            out.append(Text(f"SKIP {r.check}: {r.metric}: {r.message}", style="dim"))
    for n in report.notices:
        out.append(Text(f"notice: {n}", style="cyan"))
    nf, nw = len(report.failed), len(report.warned)
    summary = (f"{nf} failed, {nw} warned, {sum(r.verdict == 'pass' for r in report.results)} "
               f"passed, {sum(r.verdict == 'skip' for r in report.results)} skipped")
    out.append(Text(("FAILED: " if nf else "PASSED: ") + summary,
                    style="bold red" if nf else "bold green"))
    return out


def budget_dict(report: Any, limits: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION, "tool": report_meta(), "budget": report.budget,
        "passed": not report.failed, "conventions": CONVENTIONS,
        "summary": {v: sum(r.verdict == v for r in report.results)
                    for v in ("pass", "warn", "fail", "skip")},
        "results": [{
            "check": r.check, "metric": r.metric, "scope": r.scope, "kind": r.kind,
            "actual": r.actual, "threshold": r.threshold, "baseline": r.baseline,
            "headroom_pct": r.headroom_pct(), "verdict": r.verdict, "message": r.message,
            "limit": None if r.limit is None else {"level": r.limit.level, "value": r.limit.value,
                                                   "text": r.limit.text, "key": r.limit.key},
        } for r in report.results],
        "limits": limits, "metrics": report.metrics, "notices": report.notices,
    }


def budget_junit(report: Any) -> str:
    """JUnit XML: one testcase per verdict row (failure / skipped / passed; warnings in
    system-out), as CI systems read it."""
    import xml.etree.ElementTree as ET

    from convcost.budget import fmt_metric

    suite = ET.Element("testsuite", name="convcost", tests=str(len(report.results)),
                       failures=str(len(report.failed)),
                       skipped=str(sum(r.verdict == "skip" for r in report.results)), errors="0")
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=f"convcost.{r.check}",
                             name=f"{r.metric}{'' if r.scope == 'model' else ' ' + r.scope}"
                                  f"{' (regression)' if r.kind == 'regression' else ''}")
        detail = f"actual {fmt_metric(r.metric, r.actual)}, limit {_limit_text(r)}"
        if r.verdict == "fail":
            ET.SubElement(case, "failure", message=r.message, type="BudgetExceeded").text = detail
        elif r.verdict == "skip":
            ET.SubElement(case, "skipped", message=r.message)
        else:
            ET.SubElement(case, "system-out").text = (r.message or "PASS") + ": " + detail
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def budget_markdown(report: Any) -> str:
    from convcost.budget import fmt_metric

    icon = {"pass": "pass", "warn": "**warn**", "fail": "**FAIL**", "skip": "skip"}
    rows = []
    for r in report.results:
        h = r.headroom_pct()
        rows.append([r.check, r.metric + (" (regression)" if r.kind == "regression" else ""),
                     r.scope, fmt_metric(r.metric, r.actual), _limit_text(r),
                     "" if h is None else f"{h:+.1f}%", icon.get(r.verdict, r.verdict)])
    nf = len(report.failed)
    parts = [f"### convcost check: {'FAILED' if nf else 'passed'} ({report.budget})", "",
             md_table(["check", "metric", "scope", "actual", "limit", "headroom", "verdict"],
                      rows, "lllrlrl")]
    msgs = [r.message for r in report.results if r.verdict in ("fail", "warn")]
    if msgs:
        parts += [""] + [f"- {m}" for m in msgs]
    if report.notices:
        parts += [""] + [f"> {n}" for n in report.notices]
    return "\n".join(parts) + "\n"
