"""`check` reports: verdict table, JSON, JUnit XML and the Markdown step summary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from convcost.counting.analysis import CONVENTIONS, SCHEMA_VERSION, report_meta
from convcost.report.common import (
    md_table,
)
from convcost.report.layout import Col, dropped_line, fit_table, rich_text

if TYPE_CHECKING:
    from rich.console import RenderableType

_VERDICT_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim",
                  "error": "red"}


def _limit_text(r: Any) -> str:
    from convcost.check.verdicts import fmt_metric

    if r.limit is None:
        return "-"
    if r.kind == "regression":
        thr = f" = {fmt_metric(r.metric, r.threshold)}" if r.threshold is not None else ""
        return f"{r.limit.level} baseline {r.limit.text}{thr}"
    value = r.threshold if r.threshold is not None else r.limit.value
    return f"{r.limit.level} {fmt_metric(r.metric, value)}"


def budget_renderables(report: Any, width: int | None = None) -> list[RenderableType]:
    """The verdict table (fitted to ``width``), one line per failure, warning, error and skip
    reason, the notices and the summary."""
    from convcost.check.verdicts import fmt_metric

    cols = [Col("check", "left", 100), Col("metric", "left", 100), Col("scope", "left", 40),
            Col("actual", "right", 90), Col("limit", "left", 80), Col("headroom", "right", 70),
            Col("verdict", "left", 100)]
    rows = []
    for r in report.results:
        h = r.headroom_pct()
        rows.append([r.check, r.metric + (" (regression)" if r.kind == "regression" else ""),
                     r.scope, fmt_metric(r.metric, r.actual), _limit_text(r),
                     "" if h is None else (f"{h:.1f}% left" if h >= 0 else f"{-h:.1f}% over"),
                     rich_text(r.verdict.upper(), style=_VERDICT_STYLE[r.verdict])])
    t, dropped = fit_table(cols, rows, width=width, title=f"convcost check: {report.budget}")
    out: list[RenderableType] = [t, *dropped_line(dropped)]
    skips: dict[tuple[str, str], list[str]] = {}
    for r in report.results:
        if r.verdict in ("fail", "warn", "error"):
            out.append(rich_text(r.message, style=_VERDICT_STYLE[r.verdict]))
        elif r.verdict == "skip":
            name = r.metric + (" (regression)" if r.kind == "regression" else "")
            skips.setdefault((r.check, r.message), []).append(name)
    for (check, why), metrics in skips.items():
        out.append(rich_text(f"SKIP {check}: {', '.join(metrics)}: {why}", style="dim"))
    for n in report.notices:
        out.append(rich_text(f"notice: {n}", style="cyan"))
    out.extend(rich_text(line, style="dim") for line in latency_lines(report))
    nf, nw, ne = len(report.failed), len(report.warned), len(report.errors)
    summary = (f"{nf} failed, {nw} warned, {sum(r.verdict == 'pass' for r in report.results)} "
               f"passed, {sum(r.verdict == 'skip' for r in report.results)} skipped"
               + (f", {ne} check(s) could not be measured" if ne else ""))
    bad = nf or ne or report.interrupted
    out.append(rich_text(("FAILED: " if bad else "PASSED: ") + summary,
                    style="bold red" if bad else "bold green"))
    return out


def latency_lines(report: Any) -> list[str]:
    """'latency of tiny: cpu fp32 on onnxruntime 1.32.0 (CPUExecutionProvider), setup 0.2 s
    outside the timing' for each measured latency not on eager."""
    out = []
    for check, m in (report.metrics or {}).items():
        lat = (m or {}).get("latency") or {}
        b = lat.get("backend") or {}
        if b and b.get("name") != "eager":
            setup = lat.get("setup_s")
            out.append(f"latency of {check}: {lat.get('device')} {lat.get('dtype')} on "
                       f"{b.get('name')} {b.get('version')} ({b.get('provider')})"
                       + (f", setup {setup:.1f} s outside the timing" if setup else ""))
    return out


def budget_dict(report: Any, limits: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION, "tool": report_meta(), "budget": report.budget,
        "passed": not report.failed and not report.errors and not report.interrupted,
        "exit_status": report.exit_status, "conventions": CONVENTIONS,
        "summary": {v: sum(r.verdict == v for r in report.results)
                    for v in ("pass", "warn", "fail", "skip", "error")},
        "errors": [{"check": c, "exit_status": code, "message": m} for c, code, m in report.errors],
        "interrupted": report.interrupted, "not_checked": report.not_checked,
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

    from convcost.check.verdicts import fmt_metric

    suite = ET.Element("testsuite", name="convcost", tests=str(len(report.results)),
                       failures=str(len(report.failed)),
                       skipped=str(sum(r.verdict == "skip" for r in report.results)),
                       errors=str(sum(r.verdict == "error" for r in report.results)))
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=f"convcost.{r.check}",
                             name=f"{r.metric}{'' if r.scope == 'model' else ' ' + r.scope}"
                                  f"{' (regression)' if r.kind == 'regression' else ''}")
        detail = f"actual {fmt_metric(r.metric, r.actual)}, limit {_limit_text(r)}"
        if r.verdict == "error":
            ET.SubElement(case, "error", message=r.message, type="ModelError").text = r.message
        elif r.verdict == "fail":
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
    from convcost.check.verdicts import fmt_metric

    icon = {"pass": "pass", "warn": "**warn**", "fail": "**FAIL**", "skip": "skip",
            "error": "**ERROR**"}
    rows = []
    for r in report.results:
        h = r.headroom_pct()
        rows.append([r.check, r.metric + (" (regression)" if r.kind == "regression" else ""),
                     r.scope, fmt_metric(r.metric, r.actual), _limit_text(r),
                     "" if h is None else f"{h:+.1f}%", icon.get(r.verdict, r.verdict)])
    nf = len(report.failed) + len(report.errors) + int(report.interrupted)
    parts = [f"### convcost check: {'FAILED' if nf else 'passed'} ({report.budget})", "",
             md_table(["check", "metric", "scope", "actual", "limit", "headroom", "verdict"],
                      rows, "lllrlrl")]
    msgs = [r.message for r in report.results if r.verdict in ("fail", "warn", "error")]
    if msgs:
        parts += [""] + [f"- {m}" for m in msgs]
    if report.notices:
        parts += [""] + [f"> {n}" for n in report.notices]
    lat = latency_lines(report)
    if lat:
        parts += [""] + [f"> {n}" for n in lat]
    return "\n".join(parts) + "\n"
