"""`plan` reports: each layer's choice with its figures before and after, the totals predicted
and measured, the front, a ready budget entry; as a table, JSON, CSV, Markdown."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

from convcost.counting.analysis import SCHEMA_VERSION, report_meta
from convcost.report.common import CONVENTION_LINE, json_text, md_table, timing_lines
from convcost.report.layout import Col, fit_table, rich_text
from convcost.units import fmt_ms, fmt_ratio, human

if TYPE_CHECKING:
    from rich.console import RenderableType

    from convcost.plan.result import PlannedModel, PlanReport, Verified
    from convcost.plan.solver import Option

LIMITS_LINE = ("The planner optimises cost, not accuracy: a substituted model must be retrained "
               "(or fine-tuned) before it is used; channel counts are kept (no width search); "
               "latencies are this machine's, on the backend(s) named.")
_FMT = {"latency": fmt_ms, "params": human, "macs": human}


def _lat(o: Option) -> str:
    if o.latency_ms is None:
        return "-"
    ci = f" [{fmt_ms(o.latency_ci[0])}, {fmt_ms(o.latency_ci[1])}]" if o.latency_ci else ""
    return fmt_ms(o.latency_ms) + ci + (" busy" if o.busy else "")


def _total(report: PlanReport, plan: PlannedModel, metric: str) -> str:
    v = plan.totals.get(metric)
    if v is None:
        return "-"
    r = plan.ratios.get(metric)
    return f"{_FMT[metric](v)} ({fmt_ratio(r)})" if r is not None else _FMT[metric](v)


def _measured(v: Verified) -> str:
    if v.ratio is None:
        return f"not measured: {v.error}" if v.error else "not measured"
    lo, hi = v.ci or (v.ratio, v.ratio)
    return (f"{fmt_ratio(v.ratio)} [{lo:.3g}, {hi:.3g}] of the original in {v.rounds} "
            f"interleaved rounds (planned model {fmt_ms(v.planned_ms)})"
            + (" busy" if v.busy else ""))


def verdict_lines(report: PlanReport) -> list[str]:
    """Predicted against measured, per backend, and what it means."""
    best = report.best
    out = []
    pred = best.ratios.get("latency")
    for v in best.verified:
        line = f"measured on {v.backend}: {_measured(v)}"
        if pred is not None:
            line += f"; predicted {fmt_ratio(pred)}"
            ok = best.agrees(v)
            if ok is False:
                line += (" - outside the measured interval: layer latencies do not add up "
                         "here (fusion, caches, memory traffic between layers)")
            elif ok:
                line += " - inside the measured interval"
        out.append(line)
    for v in report.broken_latency():
        lim = next(x for x in report.limits if x.metric == "latency")
        out.append(f"FAIL: the planned model measured {fmt_ms(v.planned_ms)} on {v.backend}, "
                   f"over --max-latency {lim.text} ({fmt_ms(lim.value)})")
    if report.from_table:
        out.append(f"planned from the latency table alone ({report.from_table}): nothing was "
                   "measured and the plan was not verified; time it on that device with "
                   "`convcost compare --apply plan.yaml SOURCE`")
    elif report.timed and not report.verify:
        out.append("not verified (--no-verify): the totals are predictions from per-layer "
                   "figures")
    if not report.timed:
        out.append("not timed (--no-time): counts only, no latency and no verification")
    return out


def budget_entry(report: PlanReport) -> list[str]:
    """A `convcost check` budget entry for the planned model (with --apply)."""
    best = report.best
    lines = ["checks:", f"  - name: {report.name}-planned", f"    model: {report.source}",
             "    apply: plan.yaml            # the plan file (plan -o plan.yaml), relative "
             "to the budget",
             "    limits:", f"      params: {round(best.totals['params'])}",
             f"      macs: {round(best.totals['macs'])}"]
    if "latency" in best.totals and best.verified and best.verified[0].planned_ms:
        dev = (report.device or {}).get("device") or "cpu"
        dtype = (report.device or {}).get("dtype") or "fp32"
        lines.append(f"      latency: {{warn: \"{fmt_ms(best.verified[0].planned_ms * 1.1)}\", "
                     f"device: {dev.split(':')[0]}, dtype: {dtype}, "
                     f"backend: {best.verified[0].backend}}}   # measured + 10%")
    return lines


def _layer_rows(report: PlanReport) -> list[list[str]]:
    rows = []
    for name, kind, keep, chosen in report.chosen(report.best):
        changed = chosen.variant is not None
        rows.append([name, kind, chosen.label if changed else "keep",
                     human(keep.params), human(chosen.params) if changed else "",
                     human(keep.macs), human(chosen.macs) if changed else "",
                     _lat(keep), _lat(chosen) if changed else ""])
    return rows


HEADERS = ["layer", "kind", "choice", "params", "params after", "MACs", "MACs after",
           "latency", "latency after"]


def plan_renderables(report: PlanReport, width: int | None = None) -> list[RenderableType]:
    cols = [Col("layer", "left", 100), Col("kind", "left", 40, hide_if_empty=True),
            Col("choice", "left", 100), Col("params", "right", 60),
            Col("params after", "right", 80), Col("MACs", "right", 50),
            Col("MACs after", "right", 70), Col("latency", "right", 55),
            Col("latency after", "right", 75)]
    rows = _layer_rows(report)
    if not report.timed:
        cols, rows = cols[:-2], [r[:-2] for r in rows]
    t, _ = fit_table(cols, rows, width=width,
                     title=f"convcost plan: {report.name} (minimise {report.objective})")
    out: list[RenderableType] = [t, *[rich_text(x) for x in _summary(report)]]
    if len(report.plans) > 1:
        out.append(_front_table(report, width))
    out += [rich_text(x, style="yellow" if x.startswith(("FAIL", "note")) else None)
            for x in verdict_lines(report)]
    out += timing_lines(report.timing, report.device, None)
    out += [rich_text(f"note: {n}", style="yellow") for n in report.notes]
    out.append(rich_text("budget entry for the planned model:\n" + "\n".join(budget_entry(report)),
                         style="dim"))
    out += [rich_text(LIMITS_LINE, style="dim"), rich_text(CONVENTION_LINE, style="dim")]
    return out


def _summary(report: PlanReport) -> list[str]:
    best = report.best
    changed = sum(1 for *_, c in report.chosen(best) if c.variant is not None)
    limits = ", ".join(f"--max-{x.metric} {x.text} ({_FMT[x.metric](x.value)})"
                       for x in report.limits) or "no limits"
    out = [f"source {report.source}  |  {limits}  |  {changed} of {len(best.choice)} "
           "selected convs changed",
           "predicted: " + "; ".join(f"{m} {_total(report, best, m)}"
                                     for m in ("params", "macs", "latency") if m in best.totals)
           + " (original: " + ", ".join(f"{m} {_FMT[m](v)}"
                                         for m, v in report.options.original.items()) + ")"]
    if report.options.busy:
        out.append(f"note: {len(report.options.busy)} option figure(s) were measured while the "
                   "machine was busy and planned from as marked ('busy'): rerun on a quieter "
                   "machine for a firmer plan")
    return out


def _front_table(report: PlanReport, width: int | None) -> Any:
    cols = [Col("plan", "right", 100), Col("changed", "right", 60), Col("params", "right", 90),
            Col("MACs", "right", 60), Col("latency (predicted)", "right", 90),
            Col("measured", "left", 80)]
    rows = []
    for i, p in enumerate(report.plans, 1):
        changed = sum(1 for *_, c in report.chosen(p) if c.variant is not None)
        rows.append([str(i), str(changed), _total(report, p, "params"), _total(report, p, "macs"),
                     _total(report, p, "latency"),
                     "; ".join(_measured(v) for v in p.verified) or "-"])
    t, _ = fit_table(cols, rows, width=width, title="the Pareto front: fastest to smallest")
    return t


def plan_dict(report: PlanReport) -> dict[str, Any]:
    """The plan JSON contract (docs/json.md)."""
    def plan_d(p: PlannedModel) -> dict[str, Any]:
        return {"layers": [{"name": n, "kind": k, "choice": c.label if c.variant else "keep",
                            "variant": c.variant, "groups": c.groups,
                            "before": _opt(keep), "after": _opt(c)}
                           for n, k, keep, c in report.chosen(p)],
                "predicted": p.totals, "predicted_ratio": p.ratios,
                "measured": [v.to_dict() for v in p.verified],
                "agrees": [p.agrees(v) for v in p.verified]}

    return {"schema_version": SCHEMA_VERSION, "tool": report_meta(), "source": report.source,
            "name": report.name, "objective": report.objective,
            "limits": [{"metric": x.metric, "text": x.text, "value": x.value}
                       for x in report.limits],
            "original": report.options.original, "rest": report.options.rest,
            "timed": report.timed, "verified": report.verify,
            "from_table": report.from_table,
            "plan": plan_d(report.best), "frontier": [plan_d(p) for p in report.plans],
            "busy_options": report.options.busy, "notes": report.notes,
            "limitations": LIMITS_LINE, "device": report.device, "timing": report.timing}


def _opt(o: Option) -> dict[str, Any]:
    return {"params": o.params, "macs": o.macs, "latency_ms": o.latency_ms,
            "latency_ci": list(o.latency_ci) if o.latency_ci else None, "busy": o.busy}


def plan_csv(report: PlanReport) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["plan", "layer", "kind", "choice", "params", "params_after", "macs",
                "macs_after", "latency_ms", "latency_ms_after"])
    for i, p in enumerate(report.plans, 1):
        for n, k, keep, c in report.chosen(p):
            w.writerow([i, n, k, c.label if c.variant else "keep", keep.params, c.params,
                        keep.macs, c.macs, keep.latency_ms if keep.latency_ms is not None else "",
                        c.latency_ms if c.latency_ms is not None else ""])
        w.writerow([i, "(total, predicted)", "", "", report.options.original["params"],
                    round(p.totals["params"]), report.options.original["macs"],
                    round(p.totals["macs"]), report.options.original.get("latency", ""),
                    p.totals.get("latency", "")])
    if report.from_table:
        w.writerow(["note", f"planned from the latency table alone ({report.from_table}): "
                    "nothing measured, not verified"])
    w.writerow(["note", LIMITS_LINE])
    return buf.getvalue()


def plan_markdown(report: PlanReport) -> str:
    rows = _layer_rows(report)
    heads = HEADERS if report.timed else HEADERS[:-2]
    rows = [[f"`{r[0]}`", *r[1:len(heads)]] for r in rows]
    parts = [f"## convcost plan: {report.name} (minimise {report.objective})", "",
             *_summary(report), "", md_table(heads, rows, "lll" + "r" * (len(heads) - 3)), ""]
    parts += [f"> {x}" for x in verdict_lines(report)]
    parts += ["", "```yaml", *budget_entry(report), "```", "", f"_{LIMITS_LINE}_", ""]
    return "\n".join(parts)


def render_plan(report: PlanReport, fmt: str, *, width: int | None = None) -> str:
    from convcost.report.common import to_console_text

    if fmt == "json":
        return json_text(plan_dict(report)) + "\n"
    if fmt == "csv":
        return plan_csv(report)
    if fmt == "markdown":
        return plan_markdown(report)
    return to_console_text(plan_renderables(report, width), width)
