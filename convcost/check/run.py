"""Running a budget: each check's model measured in its own child process (the jobs/timing
path that analyze uses), then judged."""

from __future__ import annotations

from pathlib import Path

from convcost.check.baseline import load_baseline
from convcost.check.budget_file import Budget
from convcost.check.verdicts import BudgetReport, Verdict, evaluate_check


def run_budget(budget: Budget, *, measure_latency: bool = True, update_baseline: bool = False,
               baseline_path: Path | None = None, max_time_s: float = 1.0,
               memory_check: bool = True, timeout_s: float = 600.0) -> BudgetReport:
    """Measure every check's model (each in its own child process), judge every limit.

    Nothing is lost: a model that cannot be loaded, counted or timed (or whose code ends the
    process) is an ``error`` row naming why, and the other checks go on; Ctrl-C or SIGTERM stop
    after the finished checks (``report.interrupted``). A latency limit for a device that is
    absent here is skipped with a visible notice (CI usually has no GPU).
    """
    from convcost import isolation
    from convcost.errors import ConvcostError
    from convcost.jobs import run_check

    bpath = baseline_path or budget.baseline
    baseline = None if update_baseline else load_baseline(bpath)
    report = BudgetReport(budget=str(budget.path))
    for i, check in enumerate(budget.checks):
        try:
            m = isolation.call(run_check, check, measure_latency, max_time_s, memory_check,
                               budget.on_busy, isolate=True, label=check.model,
                               timeout_s=timeout_s)
        except ConvcostError as e:
            report.results.append(Verdict(check.name, "model", "model", None, None, "error",
                                         message=str(e)))
            report.errors.append((check.name, int(e.exit_status), str(e)))
            continue
        except KeyboardInterrupt:
            report.interrupted = True
            report.terminated = isolation.TERMINATED["flag"]
            report.not_checked = [c.name for c in budget.checks[i:]]
            break
        report.metrics[check.name] = {k: v for k, v in m.metrics.items()
                                      if not k.endswith("_failed")
                                      and k not in ("latency_skip", "latency_busy")}
        evaluate_check(check, m.metrics, m.layers, baseline, bpath, report, update_baseline,
                       budget.on_unmeasured)
    return report


