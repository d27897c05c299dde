"""What analyze and compare run for one point of their options, and a sweep over points
(``--batch 1,8,32``, ``--threads 1,2``): requests built from the options, one job per point
(isolated as the command's own), one report rendered."""

from __future__ import annotations

from typing import Any

import click

from convcost.cli_options import compare_request, layer_request, source_request, timing_request
from convcost.cli_output import emit, run_status


def analyze_once(o: dict[str, Any]) -> Any:
    """analyze's job for the options ``o`` (one point)."""
    from convcost import isolation, jobs
    from convcost.report.progress import progress_for

    src, timing = source_request(o), timing_request(o)
    return isolation.call(jobs.run_analyze, src, timing, o["dtype"], progress_for,
                          isolate=jobs.needs_isolation(o["source"]), label=o["source"],
                          timeout_s=o["timeout"])


def run_sweep(o: dict[str, Any], fmt: str, command: str, points: list[tuple[Any, Any]],
           once: Any, each: Any, text: Any) -> int:
    """A sweep: ``once`` per (batch, threads) point, each with its share of --time-budget;
    one report with every point and the summary; the worst exit status of the points."""
    import json

    from convcost.report.sweep import SweepPoint, SweepReport, render_sweep, sweep_renderables

    done = []
    for batch, threads in points:
        share = {**o, "batch": batch, "threads": threads,
                 "time_budget": max(0.1, round(o["time_budget"] / len(points), 1))}
        result = once(share)
        done.append(SweepPoint(batch, threads if isinstance(threads, int) else None,
                               result.report, result.run))
    sweep = SweepReport(command, done)
    if o["plot"] is not None:
        from convcost.report.plot import plot_sweep

        click.echo(f"wrote {plot_sweep(sweep, o['plot'])}", err=True)
    emit(fmt, o["output"], o["wide"], lambda w: sweep_renderables(sweep, each, w),
         lambda f: render_sweep(sweep, f, lambda r: json.loads(text(r, "json")),
                                lambda r: text(r, "markdown"), lambda r, w: each(r, w)))
    return max(run_status(p.run, o["output"]) for p in done)


def compare_once(o: dict[str, Any]) -> Any:
    """compare's job for the options ``o`` (one point)."""
    from convcost import isolation, jobs
    from convcost.report.progress import progress_for

    timing = timing_request(o)
    if o["source"] is None:
        layer, variants = jobs.builtin_layer(layer_request(o))
        return isolation.call(jobs.run_compare_layer, layer, variants, timing, progress_for,
                              o["pass_name"], isolate=False, label="the built-in layer")
    return isolation.call(jobs.run_compare, source_request(o), compare_request(o), timing,
                          progress_for, isolate=jobs.needs_isolation(o["source"]),
                          label=o["source"], timeout_s=o["timeout"])
