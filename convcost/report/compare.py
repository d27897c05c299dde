"""`compare` reports: per-layer variant rows and whole-model rows, as tables, JSON, CSV, Markdown.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

from convcost.counting.analysis import CONVENTIONS, SCHEMA_VERSION, report_meta
from convcost.counting.passes import BACKWARD_CONVENTION, MEMORY_CONVENTION
from convcost.report.common import (
    CONVENTION_LINE,
    csv_cell,
    has_tails,
    iqr_cell,
    json_text,
    lowering_cells,
    lowering_heads,
    lowering_note,
    lowers,
    md_table,
    roof_cells,
    roofline_of,
    tail_cells,
    tails_of,
    timing_cols,
    timing_lines,
    to_console_text,
)
from convcost.report.layout import Col, Notes, dropped_line, fit_table, rich_text
from convcost.timing.engine import BUDGET, CACHED, INTERRUPTED, SAME, UNSUPPORTED
from convcost.timing.stats import PairedRatio
from convcost.timing.status import Status
from convcost.timing.training import CONVENTION as TRAINING_CONVENTION
from convcost.units import fmt_bytes, fmt_ms, fmt_ratio, human

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text as RichText

    from convcost.figures import LatencyFigure
    from convcost.variants.compare import CompareReport, CompareRow, LayerCompare

COMPARE_CONVENTIONS = {
    **CONVENTIONS,
    "memory": MEMORY_CONVENTION,
    "backward_macs": BACKWARD_CONVENTION,
    "pass": TRAINING_CONVENTION,
    "latency_percentiles": "p10/p90/p99 of the samples (a CPU sample is the mean of "
                           "calls_per_sample calls); p10/p90 need 10 samples, p99 100",
    "ratio": "variant / baseline (the layer or model as it is); counted by fvcore on real modules",
    "analytic": "closed-form ratio of weights and MACs (bias excluded, as the papers count)",
    "latency_ratio": "variant / baseline latency, paired: median of the per-round ratios of "
                     "interleaved rounds (baseline and variant back to back), with a bootstrap "
                     "95% interval (latency_ratio_ci)",
}
LEGEND = ("Ratios: variant / original; analytic: closed form (weights, bias excluded); latency: "
          "median per call, ±IQR relative ('!' = did not converge); latency ratio: median of "
          "per-round ratios of interleaved rounds, 95% bootstrap interval in brackets.")


def _noisy(row: LatencyFigure) -> bool:
    """A measured ratio whose interval is too wide to quote (see stats.PairedRatio)."""
    if row.ratio_latency is None or row.latency_ci is None or row.latency_source == SAME:
        return False
    return not PairedRatio(row.ratio_latency, *row.latency_ci,
                           row.latency_rounds or 0).supports_headline


def _latency_phrase(row: LatencyFigure) -> str:
    if row.latency_source == SAME:
        return "= original"
    if row.ratio_latency is None or row.latency_ci is None:
        return ""
    if row.withheld:
        return "latency withheld (busy)"
    if _noisy(row):
        lo, hi = row.latency_ci
        return f"noisy: {fmt_ratio(lo)}-{fmt_ratio(hi)}"
    return f"latency {fmt_ratio(row.ratio_latency)}"


def _headline(row: CompareRow, backends: list[str | None] | None = None) -> str:
    """'MACs x0.031, latency x6.40', 'MACs x0.25, noisy: x0.2-x1.4' or 'MACs x1.00, = original';
    with several backends one latency phrase each: 'MACs x0.25, latency x0.63 eager, latency
    x0.40 onnxruntime'."""
    if row.skipped:
        return "skipped"
    parts = [f"MACs {fmt_ratio(row.ratio_macs)}"]
    names = backends or [None]
    if len(names) == 1:
        lat = _latency_phrase(row.on(names[0]))
        return ", ".join([*parts, lat] if lat else parts)
    if all(row.on(b).latency_source == SAME for b in names):
        return f"{parts[0]}, = original"
    lats = [f"{_latency_phrase(row.on(b)).removeprefix('latency ')} {b}" for b in names
            if _latency_phrase(row.on(b))]
    return ", ".join([*parts, "latency " + " / ".join(lats)] if lats else parts)


def backend_names(report: CompareReport) -> list[str | None]:
    """The backends of a timed report when there are several (in run order), else [None]: the
    row's own fields."""
    names: list[str | None] = []
    for _, r in report.keyed_rows():
        names += [b for b in r.backends if b not in names]
    return names if len(names) > 1 else [None]


def _ratio_cell(row: LatencyFigure) -> str:
    """'x0.705 [0.681, 0.729]' (the paired latency ratio and its 95% interval)."""
    if row.latency_source == SAME:
        return "x1 (same kernel)"
    if row.ratio_latency is None:
        return "-"
    if row.latency_ci is None or row.latency_ci == (1.0, 1.0):
        return fmt_ratio(row.ratio_latency)
    lo, hi = row.latency_ci
    return f"{fmt_ratio(row.ratio_latency)} [{lo:.3g}, {hi:.3g}]"


def _note(row: CompareRow, backends: list[str | None] | None = None) -> str:
    """The row's notes in one cell (Markdown, the wide form)."""
    return "; ".join(_notes(row, backends))


def _notes(row: CompareRow, backends: list[str | None] | None = None) -> list[str]:
    if row.skipped:
        return [f"skipped: {row.skipped}"]
    notes = list(row.warnings)
    names = backends or [None]
    for b in reversed(names):
        rb = row.on(b)
        err = rb.timing.error if rb.timing is not None else None
        if err:
            if b is None:
                text = f"timing failed: {err}"
            elif err.startswith((f"{b} ", f"{b}:")):
                text = err  # already names its backend ('onnxruntime export failed: ...')
            else:
                text = f"{b}: {err}"
            notes.insert(0, text)
        elif b is not None and rb.latency_source in (BUDGET, INTERRUPTED, UNSUPPORTED) \
                and b != names[0]:
            notes.append(f"{b}: {_status_word(rb.latency_source)}")
        partial = lowering_note(rb.timing)
        if partial:
            notes.append(f"{b}: {partial}" if b is not None else partial)
    if row.latency_source == SAME:
        notes.insert(0, "same kernel as the original: not timed again")
    elif row.latency_source in (BUDGET, INTERRUPTED, UNSUPPORTED):
        notes.insert(0, Status(row.latency_source).missing_text)
    elif row.latency_source == CACHED and row.cached_at:
        notes.append(f"cached {row.cached_at[:10]}")
    g = row.timing.measurement.graph_median_ms if row.timing is not None else None
    if g is not None and row.latency_source != SAME:
        notes.append(f"CUDA graph: {fmt_ms(g)}")
    return notes


def _status_word(source: str | None) -> str:
    status = Status.of(source)
    return status.missing_text if status is not None else "not measured"


def _merged(rows: list[CompareRow]) -> list[tuple[CompareRow, str]]:
    """(row, label) with consecutive skipped rows of one variant and reason merged:
    'pointwise-grouped g=2,4,8' instead of three identical skip rows (JSON keeps them all)."""
    out: list[tuple[CompareRow, str]] = []
    for r in rows:
        prev = out[-1][0] if out else None
        if (r.skipped and prev is not None and prev.skipped == r.skipped
                and prev.variant == r.variant and r.groups is not None):
            out[-1] = (prev, out[-1][1] + f",{r.groups}")
        else:
            out.append((r, r.label))
    return out


def _any_latency(report: CompareReport) -> bool:
    return any(r.latency_ms is not None for _, r in report.keyed_rows())


class _View:
    """What every compare table shares: whether it is timed, the backends, their columns and
    cells, and the footnotes."""

    def __init__(self, report: CompareReport) -> None:
        self.timed = _any_latency(report)
        self.bn = backend_names(report)
        self.extra = [b for b in self.bn[1:] if b is not None]
        self.suffix = f" {self.bn[0]}" if self.bn[0] is not None else ""
        self.notes = Notes()

    def extra_cols(self) -> list[Col]:
        return [c for b in self.extra for c in (Col(f"latency {b}", "right", 74),
                                                Col(f"latency ratio {b}", "right", 65))]

    def extra_cells(self, r: CompareRow, first: bool) -> list[str]:
        return [c for b in self.extra for c in (_latency_cell(r.on(b)),
                                                "" if first else _ratio_cell(r.on(b)))]

    def tail(self, r: CompareRow, first: bool) -> list[str]:
        """The headline and notes cells."""
        return ["baseline" if first else _headline(r, self.bn), self.notes.ref(_notes(r, self.bn))]


def _layer_table(report: CompareReport, v: _View,
                 width: int | None) -> tuple[RenderableType, list[str]]:
    """Per-layer variant rows (the layer's original first), one section per layer."""
    title = (f"convcost compare: {report.name}" if not report.is_model
             else f"convcost compare: {report.name}, per layer")
    all_rows = [r for lc in report.layers for r in lc.all_rows]
    tcols, roof, peaks = timing_cols(all_rows, v.timed, label=f"latency{v.suffix}")
    costs = _cost_cols(report, model=False)
    tails = v.timed and has_tails(all_rows)
    cols = ([Col("layer", "left", 98), Col("conv", "left", 40, hide_if_empty=True)]
            if report.is_model else [])
    cols += [Col("variant", "left", 100), Col("params", "right", 62),
             Col("MACs", "right", 88), Col("FLOPs", "right", 10),
             Col("params ratio", "right", 52), Col("analytic", "right", 72),
             Col("formula", "left", 30), *[c for c, _ in costs], *tcols]
    if v.timed:
        cols += [Col(f"latency ratio{v.suffix}", "right", 66), *v.extra_cols()]
    cols += [Col("headline", "left", 100), Col("notes", "left", 100, hide_if_empty=True)]
    rows: list[list[str]] = []
    sections = []
    for lc in report.layers:
        if report.is_model and rows:
            sections.append(len(rows))
        for r, label in _merged(lc.all_rows):
            first = r is lc.baseline
            cells = [label, human(r.params), human(r.macs), human(r.flops),
                     fmt_ratio(r.ratio_params), fmt_ratio(r.analytic_macs), r.formula or "",
                     *_cost_cells(r, costs)]
            if report.is_model:
                cells = [lc.name if first else "", lc.layer.describe() if first else "", *cells]
            if v.timed:
                cells += [_latency_cell(r.figure), iqr_cell(r.timing)]
                cells += tail_cells(r.timing) if tails else []
            if roof:
                cells += roof_cells(roofline_of(r.timing), peaks)
            if v.timed:
                cells += ["" if first else _ratio_cell(r.figure), *v.extra_cells(r, first)]
            rows.append(cells + v.tail(r, first))
    return fit_table(cols, rows, width=width, title=title, sections=sections)


_MEMORY_COLS = {False: (("weights", "weight_bytes", 14), ("output", "activation_bytes", 13),
                        ("MAC", "access_bytes", 16)),
                True: (("weights", "weight_bytes", 14),
                       ("peak act.", "peak_activation_bytes", 15))}


def _cost_cols(report: CompareReport, *, model: bool) -> list[tuple[Col, str | None]]:
    """(column, memory key) of bwd MACs (training pass; key None) and of the memory columns
    that some row has (layers: weights, output, MAC; whole models: weights, peak activation
    memory)."""
    rows = _model_rows(report) if model else [r for lc in report.layers for r in lc.all_rows]
    cols: list[tuple[Col, str | None]] = [(Col("bwd MACs", "right", 57), None)] \
        if report.pass_name == "training" else []
    return cols + [(Col(title, "right", prio), key) for title, key, prio in _MEMORY_COLS[model]
                   if any(r.memory.get(key) is not None for r in rows)]


def _cost_cells(r: CompareRow, cols: list[tuple[Col, str | None]]) -> list[str]:
    """A row's cells in :func:`_cost_cols`' columns."""
    return [(human(r.backward_macs) if r.backward_macs is not None else "") if key is None
            else (fmt_bytes(r.memory[key]) if r.memory.get(key) is not None else "")
            for _, key in cols]


def _model_table(report: CompareReport, v: _View,
                 width: int | None) -> tuple[RenderableType, list[str]]:
    """Whole-model rows: the model with each variant substituted for the selected convs."""
    costs = _cost_cols(report, model=True)
    cols = [Col("variant", "left", 100), Col("replaced", "right", 45),
            Col("params", "right", 62), Col("MACs", "right", 88),
            Col("params ratio", "right", 52), Col("MACs ratio", "right", 80),
            Col("analytic (convs)", "right", 72), *[c for c, _ in costs]]
    tails = v.timed and has_tails(_model_rows(report))
    if v.timed:
        cols += [Col(f"latency{v.suffix}", "right", 75), Col("±IQR", "right", 35),
                 *([Col("p90", "right", 24), Col("p99", "right", 18)] if tails else []),
                 Col(f"latency ratio{v.suffix}", "right", 66), *v.extra_cols()]
    cols += [Col("headline", "left", 100), Col("notes", "left", 100, hide_if_empty=True)]
    rows = []
    for r in _model_rows(report):
        base = r is report.model_baseline
        cells = [r.label, "" if r.substituted is None else f"{r.substituted}/{len(report.layers)}",
                 human(r.params), human(r.macs), fmt_ratio(r.ratio_params),
                 fmt_ratio(r.ratio_macs), fmt_ratio(r.analytic_macs),
                 *_cost_cells(r, costs)]
        if v.timed:
            cells += [_latency_cell(r.figure), iqr_cell(r.timing),
                      *(tail_cells(r.timing) if tails else []),
                      "" if base else _ratio_cell(r.figure), *v.extra_cells(r, base)]
        rows.append(cells + v.tail(r, base))
    return fit_table(cols, rows, width=width,
                     title=f"convcost compare: {report.name}, whole model "
                           f"({len(report.layers)} selected convs substituted)")


def compare_renderables(report: CompareReport, *, per_layer: bool = True,
                        width: int | None = None) -> list[RenderableType]:
    """Rich tables: per-layer variant rows, then whole-model rows (for a SOURCE), fitted to
    ``width`` (None: every column); notes as numbered footnotes below. With several backends,
    a latency and a latency-ratio column per backend."""
    v = _View(report)
    notes = v.notes
    dropped: list[str] = []
    out: list[RenderableType] = []
    if per_layer or not report.is_model:
        t, d = _layer_table(report, v, width)
        out += [t, rich_text(f"source {report.source}  |  ratios to the layer as it is ('original')")]
        dropped += d
    if report.is_model:
        m, d = _model_table(report, v, width)
        out += [m, rich_text("analytic: closed form over the selected convs only; ratios: the whole "
                             "model counted by fvcore")]
        dropped += [x for x in d if x not in dropped]
    out.extend(notes.lines())
    out.extend(dropped_line(dropped))
    out.extend(_footer(report))
    out.append(rich_text(CONVENTION_LINE, style="dim"))
    out.append(rich_text(LEGEND, style="dim"))
    return out


def _all_rows(report: CompareReport) -> list[CompareRow]:
    return [r for _, r in report.keyed_rows()]


def _model_rows(report: CompareReport) -> list[CompareRow]:
    """The whole-model rows, the original model first (none for a single layer)."""
    if report.model_baseline is None:
        return []
    return [report.model_baseline, *report.model_rows]


def _footer(report: CompareReport) -> list[RichText]:
    """Whole model vs its convs alone, the timing lines, noisy ratios, notes."""
    out: list[RichText] = []
    sums = (report.timing or {}).get("layers_sum_ms")
    if report.is_model and isinstance(sums, dict):
        parts = []
        for r in _model_rows(report):
            if r.skipped:
                continue
            key = "original" if r is report.model_baseline else r.label
            parts.append(f"{r.label} {fmt_ms(r.latency_ms)} / {fmt_ms(sums.get(key))}")
        first = backend_names(report)[0]
        on = f" ({first})" if first is not None else ""
        out.append(rich_text(f"whole model / the sum of its selected convs timed alone{on}: "
                        + "; ".join(parts)))
    if report.pass_name == "training":
        out.append(rich_text(f"pass {TRAINING_CONVENTION}"))
    out.extend(timing_lines(report.timing, report.device, None))
    noisy = [r.on(b) for r in _all_rows(report) for b in backend_names(report) if _noisy(r.on(b))]
    if noisy:
        out.append(rich_text(f"note: {len(noisy)} latency ratio(s) too noisy to quote (95% interval "
                        "wider than half the ratio; shown as 'noisy: lo-hi'): for a firmer figure "
                        "raise --time-budget (and --max-time), or time on a quieter machine",
                        style="yellow"))
    for n in report.notes:
        out.append(rich_text(f"note: {n}", style="yellow"))
    return out


def _latency_cell(r: LatencyFigure) -> str:
    if r.latency_source == SAME:
        return "= original"
    if r.latency_ms is None:
        if r.timing is not None and r.timing.error:
            return "failed"
        if r.latency_source == UNSUPPORTED:
            return "n/a"
        return "not measured" if r.latency_source in (BUDGET, INTERRUPTED) else "-"
    return fmt_ms(r.latency_ms)


def _row_dict(r: CompareRow) -> dict[str, Any]:
    d = {
        "layer": r.layer, "variant": r.variant, "groups": r.groups, "label": r.label,
        "params": r.params, "macs": r.macs, "flops": r.flops, "latency_ms": r.latency_ms,
        "ratio": {"params": r.ratio_params, "macs": r.ratio_macs, "latency": r.ratio_latency},
        "analytic": {"params": r.analytic_params, "macs": r.analytic_macs},
        "latency_ratio_ci": list(r.latency_ci) if r.latency_ci is not None else None,
        "latency_source": r.latency_source, "cached_at": r.cached_at,
        "formula": r.formula, "paper": r.paper, "skipped": r.skipped, "warnings": r.warnings,
        "memory": dict(r.memory) or None,
    }
    if r.backward_macs is not None:
        d["backward_macs"] = r.backward_macs
    if r.timing is not None:
        m = r.timing.measurement
        d["latency_percentiles_ms"] = {"p10": m.p10_ms, "p90": m.p90_ms, "p99": m.p99_ms}
    if r.timing is not None:
        d["timing"] = r.timing.to_dict()
        d["latency_busy"] = r.figure.busy
        d["latency_withheld"] = r.figure.withheld
    if r.backends:
        d["backends"] = {name: f.to_dict() for name, f in r.backends.items()}
    if r.substituted is not None:
        d["substituted"] = r.substituted
        d["kept"] = [{"layer": n, "reason": why} for n, why in r.kept]
    return d


def _layer_info(lc: LayerCompare) -> dict[str, Any]:
    L = lc.layer
    return {"name": lc.name, "in": L.cin, "out": L.cout, "kernel": list(L.kernel),
            "stride": list(L.stride), "padding": list(L.padding), "dilation": list(L.dilation),
            "groups": L.groups, "bias": L.bias, "input_shape": list(L.input_shape),
            "output_shape": list(L.output_shape)}


def compare_dict(report: CompareReport) -> dict[str, Any]:
    """The compare JSON contract (docs/json.md), plus extra fields."""
    d: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "tool": report_meta(),
                         "source": report.source, "name": report.name,
                         "conventions": COMPARE_CONVENTIONS, "dtype": report.dtype,
                         "pass": report.pass_name}
    if not report.is_model:
        lc = report.layers[0]
        d["layer"] = _layer_info(lc)
        d["baseline"] = _row_dict(lc.baseline)
        d["variants"] = [_row_dict(r) for r in lc.rows]
        if len(report.layers) > 1 or report.source != "built-in layer":  # --no-model: all layers
            d["layers"] = [{**_layer_info(x), "baseline": _row_dict(x.baseline),
                            "variants": [_row_dict(v) for v in x.rows]} for x in report.layers]
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
               "ratio_latency", "ratio_latency_lo", "ratio_latency_hi", "latency_source",
               "skipped", "warnings", "latency_p10_ms", "latency_p90_ms", "latency_p99_ms",
               "backward_macs", "weight_bytes", "activation_bytes", "access_bytes",
               "peak_activation_bytes"]


_BACKEND_FIELDS = ["latency_ms", "ratio_latency", "ratio_latency_lo", "ratio_latency_hi",
                   "latency_source"]


def _backend_cells(r: LatencyFigure) -> list[Any]:
    lo, hi = r.latency_ci if r.latency_ci is not None else (None, None)
    return [r.latency_ms, r.ratio_latency, lo, hi, r.latency_source]


def compare_csv(report: CompareReport) -> str:
    """One row per layer variant (and whole-model variant); the latency fields are the first
    backend's, and with several backends each gets its own ``<field>:<backend>`` columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = [b for b in backend_names(report) if b is not None]
    rows = _all_rows(report)
    lowered = [b for b in backend_names(report) if lowers(r.on(b).timing for r in rows)]
    w.writerow(_CMP_FIELDS + [f"{f}:{b}" for b in extra for f in _BACKEND_FIELDS]
               + [h for b in lowered for h in lowering_heads(b)])
    for r in rows:
        lo, hi = r.latency_ci if r.latency_ci is not None else (None, None)
        w.writerow([csv_cell(v) for v in (
            r.layer, r.variant, r.groups, r.params, r.macs, r.flops, r.ratio_params, r.ratio_macs,
            r.analytic_params, r.analytic_macs, r.formula, r.latency_ms, r.ratio_latency, lo, hi,
            r.latency_source, r.skipped, "; ".join(r.warnings), *tails_of(r.timing),
            r.backward_macs, *[r.memory.get(k) for k in ("weight_bytes", "activation_bytes",
                                                         "access_bytes",
                                                         "peak_activation_bytes")],
            *[c for b in extra for c in _backend_cells(r.on(b))],
            *[c for b in lowered for c in lowering_cells(r.on(b).timing)])])
    for note in report.notes:  # convs left as they are (transposed, ...): listed, not dropped
        if note.startswith("not substituted: "):
            layer = note.removeprefix("not substituted: ").split(" ", 1)[0]
            w.writerow([layer, "not substituted", *[""] * 14,
                        note.removeprefix("not substituted: "), "", "", "", "", "", "", "",
                        "", "",
                        *[""] * (len(extra) * len(_BACKEND_FIELDS) + 2 * len(lowered))])
    return buf.getvalue()


def compare_markdown(report: CompareReport) -> str:
    timed = _any_latency(report)
    bn = backend_names(report)
    suffix = f" {bn[0]}" if bn[0] is not None else ""
    extra = [b for b in bn[1:] if b is not None]
    lat_heads = ([f"latency{suffix}", f"latency ratio{suffix}"]
                 + [h for b in extra for h in (f"latency {b}", f"latency ratio {b}")]) if timed else []

    def lat_cells(r: CompareRow, base: bool) -> list[str]:
        if not timed:
            return []
        return [c for b in bn for c in (_latency_cell(r.on(b)),
                                        "" if base else _ratio_cell(r.on(b)))]

    parts = [f"## convcost compare: {report.name}", "", f"Source `{report.source}`. Ratios are "
             "variant / original; analytic is the closed form (weights, bias excluded).", ""]
    headers = ["layer", "variant", "params", "MACs", "params ratio", "MACs ratio", "analytic",
               "formula", *lat_heads, "headline", "note"]
    rows = []
    for lc in report.layers:
        for r, label in _merged(lc.all_rows):
            base = r is lc.baseline
            row = [f"`{lc.name}`" if report.is_model else "layer", label, human(r.params),
                   human(r.macs), fmt_ratio(r.ratio_params), fmt_ratio(r.ratio_macs),
                   fmt_ratio(r.analytic_macs), r.formula or "", *lat_cells(r, base)]
            rows.append([*row, "baseline" if base else _headline(r, bn), _note(r, bn)])
    parts.append(md_table(headers, rows, "llrrrrrl" + "r" * len(lat_heads) + "ll"))
    if report.is_model:
        mh = ["variant", "replaced", "params", "MACs", "params ratio", "MACs ratio",
              "analytic (convs)", *lat_heads, "headline", "note"]
        mrows = []
        for r in _model_rows(report):
            base = r is report.model_baseline
            row = [r.label, "" if r.substituted is None else f"{r.substituted}/{len(report.layers)}",
                   human(r.params), human(r.macs), fmt_ratio(r.ratio_params),
                   fmt_ratio(r.ratio_macs), fmt_ratio(r.analytic_macs), *lat_cells(r, base)]
            mrows.append([*row, "baseline" if base else _headline(r, bn), _note(r, bn)])
        parts += ["", "### Whole model", "",
                  md_table(mh, mrows, "lrrrrrr" + "r" * len(lat_heads) + "ll")]
    for w in _footer(report):
        parts += ["", f"> {w.plain}"]
    parts += ["", f"_{CONVENTION_LINE}_", "", f"_{LEGEND}_", ""]
    return "\n".join(parts)


def render_compare(report: CompareReport, fmt: str, *, width: int | None = None,
                   per_layer: bool = True) -> str:
    if fmt == "json":
        return json_text(compare_dict(report)) + "\n"
    if fmt == "csv":
        return compare_csv(report)
    if fmt == "markdown":
        return compare_markdown(report)
    return to_console_text(compare_renderables(report, per_layer=per_layer, width=width), width)


