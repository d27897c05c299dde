"""Verdicts of a budget's checks: each limit judged against what was measured (and against
the baseline, for regression limits). See docs/budgets.md."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convcost.check.budget_file import DROP_NOTICE, Check, Limit
from convcost.units import fmt_bytes, fmt_ms, human


@dataclass
class Verdict:
    """One verdict row: a metric of a check, its figure, the limit and the outcome."""

    check: str
    metric: str
    scope: str  # "model" or "layer GLOB (worst: NAME)"
    actual: float | None
    limit: Limit | None
    verdict: str  # pass | warn | fail | skip | error
    kind: str = "absolute"  # absolute | regression
    baseline: float | None = None
    threshold: float | None = None  # the limit in the metric's unit (regression resolved)
    message: str = ""

    def headroom_pct(self) -> float | None:
        """(threshold - actual) / threshold in %; negative is an overage."""
        if self.actual is None or not self.threshold:
            return None
        return 100.0 * (self.threshold - self.actual) / self.threshold


@dataclass
class BudgetReport:
    budget: str
    results: list[Verdict] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # per check, for baselines
    errors: list[tuple[str, int, str]] = field(default_factory=list)  # (check, exit status, why)
    interrupted: bool = False
    terminated: bool = False
    not_checked: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """130/143 interrupted; 3 a model could not be measured; 2 a bad input; 1 a limit
        exceeded; 0 otherwise."""
        from convcost.errors import ExitStatus

        if self.interrupted:
            return int(ExitStatus.TERMINATED if self.terminated else ExitStatus.INTERRUPTED)
        codes = {code for _, code, _ in self.errors}
        for code in (int(ExitStatus.MODEL_ERROR), int(ExitStatus.BAD_INPUT)):
            if code in codes:
                return code
        if codes:
            return max(codes)
        return int(ExitStatus.BUDGET_EXCEEDED) if self.failed else 0

    @property
    def failed(self) -> list[Verdict]:
        return [r for r in self.results if r.verdict == "fail"]

    @property
    def warned(self) -> list[Verdict]:
        return [r for r in self.results if r.verdict == "warn"]


def fmt_metric(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    if metric.startswith("latency"):
        return fmt_ms(v)
    if metric.endswith("_memory"):
        return fmt_bytes(v)
    return human(v)


def _judge(check: str, metric: str, scope: str, actual: float, limits: list[Limit],
           kind: str = "absolute", baseline: float | None = None) -> Verdict:
    """The strictest exceeded level wins: error -> fail, warn -> warn, else pass."""
    verdict, hit, thr_hit = "pass", None, None
    by_level = {lim.level: lim for lim in limits}
    for level, v in (("error", "fail"), ("warn", "warn")):
        lim = by_level.get(level)
        if lim is None:
            continue
        thr = _threshold(lim, baseline)
        if actual > thr:
            verdict, hit, thr_hit = v, lim, thr
            break
    if hit is None:  # report against the tightest limit for headroom
        lims = [(lim, _threshold(lim, baseline)) for lim in limits]
        hit, thr_hit = min(lims, key=lambda t: t[1])
    r = Verdict(check, metric, scope, actual, hit, verdict, kind, baseline, thr_hit)
    if verdict != "pass":
        over = actual - thr_hit
        pct = 100.0 * over / thr_hit if thr_hit else float("inf")
        what = "regression limit" if kind == "regression" else f"{hit.level} limit"
        base = f" (baseline {fmt_metric(metric, baseline)} {hit.text})" if kind == "regression" else ""
        r.message = (f"{'FAIL' if verdict == 'fail' else 'WARN'} {check}: {metric}"
                     f"{'' if scope == 'model' else ' ' + scope} {fmt_metric(metric, actual)} > "
                     f"{what} {fmt_metric(metric, thr_hit)}{base}: over by "
                     f"{fmt_metric(metric, over)} ({pct:+.1f}%); to accept it, change {hit.key}")
    return r


def _threshold(lim: Limit, baseline: float | None) -> float:
    if baseline is None:
        return lim.value
    return baseline * (1 + lim.value) if lim.relative else baseline + lim.value


def _unmeasured(check: Check, metric: str, lim: Limit, why: str, policy: str,
                report: BudgetReport) -> Verdict:
    """A limit whose measurement failed, judged by the budget's ``on_unmeasured`` policy:
    ``error`` (exit 4), ``warn`` or ``skip``; it never passes."""
    from convcost.errors import ExitStatus

    verdict = {"error": "error", "warn": "warn", "skip": "skip"}[policy]
    msg = (f"{'ERROR' if verdict == 'error' else verdict.upper()} {check.name}: {metric} could "
           f"not be measured ({why}); on_unmeasured: {policy}")
    if verdict == "error":
        report.errors.append((check.name, int(ExitStatus.INCOMPLETE), msg))
    return Verdict(check.name, metric, "model", None, lim, verdict, message=msg)


def _judge_limits(check: Check, values: dict[str, Any], metrics: dict[str, Any],
                  report: BudgetReport, on_unmeasured: str) -> None:
    """The check's whole-model limits: judged, unmeasured (by ``on_unmeasured``) or skipped."""
    for metric, lims in check.limits.items():
        v = values[metric]
        failed = metrics.get(f"{metric}_failed") or (
            metric.startswith("latency_p") and metrics.get("latency_failed"))
        if v is None and failed:
            report.results.append(_unmeasured(check, metric, lims[0], failed, on_unmeasured,
                                              report))
            continue
        if v is None:
            report.results.append(Verdict(check.name, metric, "model", None, lims[0], "skip",
                                         message=metrics.get("latency_skip", "not measured")
                                         if metric.startswith("latency") else "not counted"))
            continue
        verdict = _judge(check.name, metric, "model", v, lims)
        if metric.startswith("latency") and metrics.get("latency_busy"):  # on_busy: accept
            verdict.message = "; ".join(x for x in (verdict.message, metrics["latency_busy"])
                                        if x)
            report.notices.append(f"{check.name}: latency judged although {metrics['latency_busy']}")
        report.results.append(verdict)


def evaluate_check(check: Check, metrics: dict[str, Any], layers: list[Any],
                   baseline: dict[str, Any] | None, baseline_path: Path | None,
                   report: BudgetReport, updating: bool = False,
                   on_unmeasured: str = "error") -> None:
    """Judge one check's measured ``metrics`` (params, macs, flops, latency_ms or None)."""
    values = {"params": metrics.get("params"), "macs": metrics.get("macs"),
              "paper_macs": metrics.get("paper_macs"),
              "flops": metrics.get("flops"), "latency": metrics.get("latency_ms"),
              "latency_p90": metrics.get("latency_p90_ms"),
              "latency_p99": metrics.get("latency_p99_ms"),
              "activation_memory": metrics.get("activation_memory"),
              "weight_memory": metrics.get("weight_memory")}
    _judge_limits(check, values, metrics, report, on_unmeasured)
    low = (metrics.get("latency") or {}).get("lowering")
    if low and low.get("portable_nodes"):  # the figure is not all the delegate's kernels
        report.notices.append(
            f"{check.name}: latency on {check.latency.backend}: {low['delegate']} took "
            f"{low['delegated_nodes']}/{low['delegated_nodes'] + low['portable_nodes']} "
            f"operator nodes; the rest ran on the portable kernels "
            f"({', '.join(low['portable_ops'])})")
    for ll in check.layers:
        matching = [r for r in layers if fnmatch.fnmatchcase(r.name, ll.match)]
        if not matching:
            report.notices.append(f"{check.name}: no layer matches {ll.match!r} ({ll.key}.match)")
            continue
        for metric, lims in ll.limits.items():
            worst = max(matching, key=lambda r: getattr(r, metric))
            report.results.append(_judge(check.name, metric,
                                         f"layers {ll.match} (worst: {worst.name})",
                                         getattr(worst, metric), lims))
    base = ((baseline or {}).get("checks") or {}).get(check.name)
    for metric, lims in check.regression.items():
        v = values[metric]
        bkey = f"{metric}_ms" if metric.startswith("latency") else metric
        b = (base or {}).get(bkey)
        if v is None and metrics.get(f"{metric}_failed") and not updating:
            report.results.append(_unmeasured(check, metric, lims[0],
                                              metrics[f"{metric}_failed"], on_unmeasured, report))
            continue
        if b is None or v is None:
            if updating:
                why = "not judged: --update-baseline is writing the baseline"
            elif b is None:
                why = (f"no baseline for '{check.name}' in {baseline_path}; write one with "
                       "convcost check --update-baseline")
            else:
                why = "not measured"
            report.results.append(Verdict(check.name, metric, "model", v, lims[0], "skip",
                                         "regression", b, message=why))
            continue
        report.results.append(_judge(check.name, metric, "model", v, lims, "regression", b))
    if base:
        for metric, bkey in (("params", "params"), ("macs", "macs"), ("paper_macs", "paper_macs"),
                             ("latency", "latency_ms")):
            v, b = values[metric], base.get(bkey)
            if v is not None and b and v < b * (1 - DROP_NOTICE):
                report.notices.append(
                    f"{check.name}: {metric} {fmt_metric(metric, v)} is {100 * (1 - v / b):.0f}% "
                    f"below the baseline {fmt_metric(metric, b)}: time to tighten the budget "
                    "(and --update-baseline)")


