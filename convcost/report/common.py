"""Rendering helpers shared by every command's report: shapes, percentages, plain-text capture of
rich output, timing columns and footers, CSV cells and Markdown tables. Rendering only.

Human units (k, M, G) in tables and Markdown; exact integers in JSON and CSV.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text as RichText

    from convcost.figures import KernelTiming

from convcost.report.layout import Col, plain_text, rich_text
from convcost.timing.status import Status
from convcost.units import fmt_ms


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (nan, inf) replaced by None: a JSON report is always
    standard JSON (``Infinity`` and ``NaN`` are not), and no such figure is ever quoted."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_text(doc: Any) -> str:
    """A report document as indented, standard JSON (no trailing newline)."""
    import json

    return json.dumps(finite(doc), indent=2, allow_nan=False)


CONVENTION_LINE = ("MACs: one fused multiply-add each (fvcore's 'flop'); FLOPs = 2 x MACs; "
                   "params: trainable parameters, buffers excluded; bias adds params, no MACs.")


def shape_str(shape: list[int] | None, batch: bool = False) -> str:
    """``[1, 64, 56, 56]`` -> ``64x56x56`` (the batch dimension dropped unless ``batch``)."""
    if not shape:
        return "-"
    dims = shape if batch or len(shape) < 2 else shape[1:]
    return "x".join(str(d) for d in dims)


def dims_label(shape: list[int] | tuple[int, ...] | None) -> str:
    """What the dimensions of an input are: BxF, BxCxL, BxCxHxW, BxCxDxHxW."""
    n = len(shape or [])
    return {2: "BxF", 3: "BxCxL", 4: "BxCxHxW", 5: "BxCxDxHxW"}.get(n, "x".join(["d"] * n) or "-")


def timing_cols(rows: list[Any], timed: bool, latency_footer: str = "",
                label: str = "latency") -> tuple[list[Any], bool, bool]:
    """Latency columns (when timed), roofline ones (when any row has one; % bound and bound when
    calibrated), with their priorities: (columns, roof, peaks). ``label`` names the latency
    column ('latency eager' when several backends are shown)."""
    roof = timed and any(roofline_of(r.timing) for r in rows)
    peaks = roof and any("bound" in (roofline_of(r.timing) or {}) for r in rows)
    cols = []
    if timed:
        cols += [Col(label, "right", 75, latency_footer), Col("±IQR", "right", 35)]
        if has_tails(rows):
            cols += [Col("p90", "right", 24), Col("p99", "right", 18)]
    if roof:
        cols += [Col("TFLOP/s", "right", 15), Col("GB/s", "right", 12)]
    if peaks:
        cols += [Col("% bound", "right", 22), Col("bound", "left", 20)]
    return cols, roof, peaks


def pct(part: int | float, whole: int | float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def to_console_text(renderables: Iterable[RenderableType], width: int | None = None) -> str:
    """Render rich objects to plain text (no colour): at ``width`` as a terminal of that width
    shows them (text wrapped at words), or, with ``width`` None, the wide form of files and
    pipes (no wrapping). Trailing spaces are removed either way."""
    if width is None:
        return plain_text(renderables)
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False,
                      markup=False, emoji=False, highlight=False, legacy_windows=False)
    for r in renderables:
        console.print(r)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"


def roofline_of(timing: KernelTiming | None) -> dict[str, Any] | None:
    """A timing record's roofline figures, if any."""
    return timing.roofline if timing is not None else None


def iqr_cell(timing: KernelTiming | None) -> str:
    """'2.1%' (IQR / median), '2.1%!' when the measurement did not converge, 'failed'."""
    if timing is None:
        return ""
    m = timing.measurement
    if m.rel_iqr is None:
        return "failed" if timing.failed else ""
    return f"{100 * m.rel_iqr:.1f}%{'' if m.converged else '!'}{' busy' if timing.busy else ''}"


def has_tails(rows: list[Any]) -> bool:
    """Some row's measurement has a p90 (10 samples or more): the p90 and p99 columns show."""
    return any(r.timing is not None and r.timing.measurement.p90_ms is not None for r in rows)


def tails_of(timing: KernelTiming | None) -> list[float | None]:
    """p10, p90, p99 (ms) of a row's measurement; None where not known."""
    m = timing.measurement if timing is not None else None
    return [None, None, None] if m is None else [m.p10_ms, m.p90_ms, m.p99_ms]


def tail_cells(timing: KernelTiming | None) -> list[str]:
    """The p90 and p99 cells ('' where the measurement has too few samples for one)."""
    return [fmt_ms(v) if v is not None else "" for v in tails_of(timing)[1:]]


def source_cell(timing: KernelTiming | None) -> str:
    """'cached 2026-11-23' for a figure reused from the latency table, else ''."""
    if timing is None:
        return ""
    if timing.source == Status.CACHED.value and timing.cached_at:
        return f"cached {timing.cached_at[:10]}"
    status = Status.of(timing.source)
    return status.missing_text if status in (Status.BUDGET, Status.INTERRUPTED) else ""


def roof_cells(rl: dict[str, Any] | None, with_peaks: bool) -> list[str]:
    if not rl:
        return ["", ""] + (["", ""] if with_peaks else [])
    cells = [f"{rl['achieved_tflops']:.3g}", f"{rl['achieved_gbs']:.3g}"]
    if with_peaks:
        cells += [f"{rl['pct_of_bound']:.0f}%" if "pct_of_bound" in rl else "",
                  rl.get("bound", "")]
    return cells


def timing_lines(timing: dict[str, Any] | None, device: dict[str, Any] | None,
                  model_ms: float | None) -> list[RichText]:
    """Footer lines of a timed report: device fingerprint, model vs per-layer sum, problems."""
    from convcost.timing.device import fingerprint_line

    if not timing:
        return []
    out = []
    if device:
        out.append(rich_text(f"device: {fingerprint_line(device)}", style="dim"))
    auto = (timing.get("machine") or {}).get("threads_auto") or ""
    if "other tasks" in auto:  # --threads auto took fewer threads than torch's default
        out.append(rich_text(f"threads: {auto}", style="yellow"))
    m = timing.get("model")
    if m and m.get("median_ms") is not None:
        line = (f"whole model: {fmt_ms(m['median_ms'])} median (IQR {fmt_ms(m['iqr_ms'])}, "
                f"n={m['n']}{', cached' if timing.get('model_source') == 'cached' else ''}"
                f"{', busy' if timing.get('model_busy') else ''})")
        if timing.get("layers_sum_ms") is not None:
            line += (f"; sum of the {timing['layers_timed']} conv/linear layers timed alone: "
                     f"{fmt_ms(timing['layers_sum_ms'])}")
        out.append(rich_text(line))
    eng = timing.get("engine") or {}
    bk = timing.get("backends") or {}
    if len(bk) > 1:
        spent = sum(b.get("timing_s") or 0.0 for b in bk.values())
        line = f"timing: {len(bk)} backends, one after the other"
        if eng.get("time_budget_s") is not None:
            line += f"; {spent:.1f} s of a {eng['time_budget_s']:g} s budget"
        out.append(rich_text(line, style="dim"))
    elif eng:
        out.append(rich_text(engine_line(eng), style="dim"))
    if len(bk) > 1 or any(name != "eager" for name in bk):
        out += [rich_text(backend_line(name, b), style="dim") for name, b in bk.items()]
    for n in timing.get("notices", []):
        out.append(rich_text(f"notice: {n}", style="cyan"))
    if not timing.get("roofline_peaks"):
        out.append(rich_text("note: no roofline peaks for this device; run `convcost calibrate` to add "
                        "% of bound and memory/compute-bound labels", style="dim"))
    return out + problem_lines(timing)


def problem_lines(timing: dict[str, Any]) -> list[RichText]:
    """What went wrong or stands unsettled: unconverged and busy measurements, failures, a
    budget that ran out, undersampled figures, an interruption."""
    out = []
    eng = timing.get("engine") or {}
    unc = timing.get("unconverged", [])
    if len(unc) > 3:
        out.append(rich_text(f"warning: {len(unc)} kernel measurements stopped at their time cap "
                        "before their median was known to 1% (or IQR/median was under "
                        f"{100 * timing.get('rel_iqr_target', 0):.0f}%), marked '!': a noisy "
                        "machine, or a budget too small for them; raise --time-budget / "
                        "--max-time (latency ratios carry their own interval)", style="yellow"))
    else:
        for u in unc:
            out.append(rich_text(f"warning: did not converge within the time cap: {u}", style="yellow"))
    out.extend(busy_lines(timing))
    for f in timing.get("failures", []):
        out.append(rich_text(f"error: failed: {f}", style="red"))
    over = timing.get("not_measured_budget", [])
    if over:
        out.append(rich_text(f"incomplete: the time budget ({eng.get('time_budget_s', 0):g} s) ran out "
                        f"before {len(over)} measurement(s) ({_some(over)}): marked 'not measured'; "
                        "raise --time-budget, or rerun (what was measured is cached)", style="red"))
    under = timing.get("undersampled", [])
    if under:
        out.append(rich_text(f"incomplete: {len(under)} measurement(s) got fewer than the "
                        f"{timing.get('min_samples', 10)}-sample minimum before the time budget ran "
                        f"out ({_some(under)}): quoted with '!', not stored; raise --time-budget "
                        "or rerun on a quieter machine", style="red"))
    if timing.get("interrupted"):
        miss = timing.get("missing", [])
        out.append(rich_text(f"interrupted: {len(miss)} measurement(s) not taken"
                        + (f" ({_some(miss)})" if miss else ""), style="red"))
    return out


def busy_lines(timing: dict[str, Any]) -> list[RichText]:
    """'busy: other tasks used about 0.8 of 2 cores during 6 of 6 measurements; ...'."""
    busy = timing.get("busy") or []
    if not busy:
        return []
    mach = timing.get("machine") or {}
    measured = (timing.get("engine") or {}).get("measured") or len(busy)
    by = mach.get("busy_by") or {}
    what = []
    if by.get("others") and mach.get("others_cores_busy_mean") is not None:
        what.append(f"other tasks used about {mach['others_cores_busy_mean']:.1f} of "
                    f"{mach.get('cpus') or '?'} cores")
    if by.get("steal"):
        what.append("the hypervisor took CPU time (steal)")
    if by.get("canary"):
        what.append("a canary kernel moved beyond its own noise")
    if by.get("gpu"):
        what.append("other processes ran on the GPU")
    cause = "; ".join(what) or "the machine was busy"
    what_then = ("quoted and stored as --on-busy accept asks" if mach.get("on_busy") == "accept"
                 else "shown, but not quoted in headlines and not stored in the latency table")
    return [rich_text(f"busy: {cause} during {len(busy)} of {max(measured, len(busy))} "
                      f"measurement(s), marked 'busy': {what_then}; rerun on a quieter machine "
                      "(`convcost doctor` shows what competes)", style="yellow")]


def _some(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def engine_line(eng: dict[str, Any]) -> str:
    """'timing: 18 unique kernels, 12 measured, 6 from the latency table; 14.2 s of a 40 s budget'."""
    parts = [f"timing: {eng.get('unique_kernels', 0)} unique kernel(s)"]
    for key, what in (("measured", "measured"), ("cached", "from the latency table"),
                      ("failed", "failed"), ("not_measured_budget", "over budget"),
                      ("interrupted", "interrupted")):
        if eng.get(key):
            parts.append(f"{eng[key]} {what}")
    line = ", ".join(parts)
    if eng.get("time_budget_s") is not None:
        line += f"; {eng.get('timing_s', 0):.1f} s of a {eng['time_budget_s']:g} s budget"
    if eng.get("cached"):
        line += " (--fresh re-measures)"
    return line


SETUP_WORDS = {"inductor": "compile", "onnxruntime": "export + session",
               "openvino": "export + compile", "executorch": "export + lowering + load"}


def backend_line(name: str, b: dict[str, Any]) -> str:
    """'backend onnxruntime 1.32.0 (CPUExecutionProvider, 2 threads, ORT_ENABLE_ALL): 4 measured;
    setup (export + session) 0.4 s, outside the timings'."""
    fp = b.get("fingerprint") or {}
    bits = [str(x) for x in (fp.get("provider"),
                             f"{fp['threads']} threads" if fp.get("threads") else None,
                             fp.get("graph_opt"),
                             f"precision {fp['precision']}" if fp.get("precision") else None) if x]
    line = f"backend {name} {fp.get('version', '')}".rstrip() + (f" ({', '.join(bits)})" if bits
                                                                  else "")
    counts = [f"{b[k]} {w}" for k, w in (("measured", "measured"), ("cached", "cached"),
                                          ("failed", "failed"),
                                          ("not_measured_budget", "over budget"),
                                          ("interrupted", "interrupted")) if b.get(k)]
    line += ": " + (", ".join(counts) or "nothing to measure")
    if b.get("timing_s") is not None and b.get("measured"):
        line += f" in {max(0.0, b['timing_s'] - (b.get('setup_s') or 0.0)):.1f} s"
    if b.get("setup_s"):
        line += (f"; setup ({SETUP_WORDS.get(name, 'setup')}) {b['setup_s']:.1f} s, outside the "
                 "timings")
    if fp.get("lowering"):
        line += "; " + lowering_phrase(fp["lowering"])
    return line


def lowering_phrase(lo: dict[str, Any]) -> str:
    """'XNNPACK took every operator node of 6/6 kernels' or 'XNNPACK took 52/54 operator nodes;
    4/6 kernels fully (portable kernels ran aten.cumsum.default)'."""
    d, p, k = lo.get("delegated_nodes", 0), lo.get("portable_nodes", 0), lo.get("kernels", 0)
    if not p:
        return f"{lo.get('delegate')} took every operator node of {k}/{k} kernels"
    ops = ", ".join(lo.get("portable_ops") or [])
    return (f"{lo.get('delegate')} took {d}/{d + p} operator nodes; {lo.get('fully_delegated')}/"
            f"{k} kernels fully (portable kernels ran {ops or 'the rest'})")


def lowering_note(t: KernelTiming | None) -> str | None:
    """'XNNPACK 5/6 nodes (portable: aten.cumsum.default)' for a kernel its delegate did not
    take whole (an undelegated node runs on the runtime's slow portable kernels); else None."""
    lo = t.lowering if t is not None else None
    return None if lo is None or lo.complete else lo.text()


def lowering_heads(backend: str | None) -> list[str]:
    """CSV columns of what a delegate took of a row's kernel (``:<backend>`` with several)."""
    suffix = f":{backend}" if backend else ""
    return [f"delegated_nodes{suffix}", f"portable_nodes{suffix}"]


def lowering_cells(t: KernelTiming | None) -> list[Any]:
    lo = t.lowering if t is not None else None
    return ["", ""] if lo is None else [lo.delegated_nodes, lo.portable_nodes]


def lowers(timings: Iterable[KernelTiming | None]) -> bool:
    """Whether any of these kernels was lowered to a delegate (its CSV gets the node columns)."""
    return any(t is not None and t.lowering is not None for t in timings)


def csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, list):
        return "x".join(str(x) for x in v)
    return v


def md_table(headers: list[str], rows: list[list[str]], align: str) -> str:
    """A GitHub Markdown table; ``align`` is one of l/r per column."""
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


