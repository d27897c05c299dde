"""Command line: each command parses its options into a request, calls one job, renders what it
returns and returns its exit status (mapped to the process's in one place,
:mod:`convcost.cli_output`). Computes nothing itself."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from convcost import __version__
from convcost.cli_options import (
    BatchesType,
    FiniteFloat,
    ShapeType,
    apply_option,
    candidate_options,
    memory_option,
    plan_options,
    plan_request,
    plan_timing,
    single_point,
    source_options,
    source_request,
    sweep_points,
    timeout_option,
    timing_options,
    wide_option,
)
from convcost.cli_output import (
    ConvcostGroup,
    check_outputs,
    emit,
    err,
    output_format,
    run_process,
    run_status,
    split_plan_output,
    stdout_console,
    table_width,
    traceback_option,
    write_file,
    write_plan_file,
)
from convcost.cli_runs import analyze_once, compare_once, run_sweep
from convcost.errors import InputError

REPORT_FORMATS = ("table", "json", "csv", "markdown")


def _format_options(f: Any) -> Any:
    f = click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write the report to FILE instead of standard output.")(f)
    return click.option("-f", "--format", "fmt", type=click.Choice(REPORT_FORMATS),
                        default="table", show_default=True, help="Output format.")(f)


@click.group(cls=ConvcostGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="convcost")
@traceback_option
def cli() -> None:
    """Parameters, MACs and measured latency of CNN layers and their grouped, depthwise,
    separable and shuffled variants.

    \b
    convcost analyze examples/tiny.yaml       per-layer params / MACs / FLOPs
    convcost analyze model.py:Net             the same for a PyTorch model
    """


@cli.command()
@click.argument("source")
@_format_options
@click.option("--batch", type=BatchesType(1 << 20),
              help="Batch size (overrides the spec's); a comma list (1,8,32) counts and times "
                   "at each size (a sweep).")
@click.option("--input-shape", type=ShapeType(), help="Input shape B,C,H,W for a model "
              "(default 1,3,224,224); a spec declares its own.")
@click.option("--depth", type=click.IntRange(0, 64), help="Collapse the table to the module "
              "hierarchy at this depth (0 = whole model).")
@click.option("--all", "show_all", is_flag=True,
              help="List every layer in the table (past 300 it is collapsed by default).")
@click.option("--export-spec", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the conv inventory as a spec of independent layers to FILE.")
@timing_options
@apply_option
@source_options
@traceback_option
def analyze(**o: Any) -> int:
    """Per-layer parameters, MACs and FLOPs of SOURCE (a YAML spec or a model)."""
    from convcost.report.analyze import analysis_renderables, render_analysis

    fmt = output_format(o["fmt"], o["output"], REPORT_FORMATS)
    check_outputs(output=o["output"], exported_spec=o["export_spec"], plot=o["plot"])
    view = {"depth": o["depth"], "show_all": o["show_all"]}
    points = sweep_points(o)
    if len(points) > 1 and o["export_spec"] is not None:
        raise InputError("--export-spec writes one spec: give one --batch and --threads")
    if len(points) > 1:
        return run_sweep(o, fmt, "analyze", points, analyze_once,
                      lambda r, w: analysis_renderables(r, **view, width=w),
                      lambda r, f: render_analysis(r, f, **view))
    result = analyze_once(o)
    report = result.report
    if o["plot"] is not None:
        from convcost.report.plot import plot_analysis

        plot_analysis(report, o["plot"])
        click.echo(f"wrote {o['plot']}", err=True)
    if o["export_spec"] is not None:
        _export_spec(report, o["export_spec"])
    emit(fmt, o["output"], o["wide"], lambda w: analysis_renderables(report, **view, width=w),
         lambda f: render_analysis(report, f, **view))
    return run_status(result.run, o["output"])


def _export_spec(report: Any, path: Path) -> None:
    from convcost.report.spec_export import export_spec_yaml

    text, notes = export_spec_yaml(report)
    write_file(path, text, say=False)
    for n in notes:
        click.echo(f"note: {n}", err=True)
    click.echo(f"wrote {path}", err=True)


@cli.command()
@click.argument("source", required=False)
@candidate_options
@click.option("--in", "cin", type=click.IntRange(1, 1 << 16), default=64, show_default=True,
              help="Built-in layer: input channels C.")
@click.option("--out", "cout", type=click.IntRange(1, 1 << 16), default=64, show_default=True,
              help="Built-in layer: output channels N.")
@click.option("--kernel", type=click.IntRange(1, 64), default=3, show_default=True,
              help="Built-in layer: kernel size K (padding K//2).")
@click.option("--size", type=click.IntRange(1, 1 << 14), default=56, show_default=True,
              help="Built-in layer: input height and width.")
@click.option("--stride", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Built-in layer: stride.")
@click.option("--model-only", is_flag=True, help="With a SOURCE: print only the whole-model rows.")
@click.option("--no-model", is_flag=True, help="With a SOURCE: skip the whole-model rows.")
@_format_options
@timing_options
@apply_option
@source_options
@traceback_option
def compare(**o: Any) -> int:
    """Params and MACs of cheaper variants of each conv, counted next to the closed form.

    \b
    Without SOURCE: a built-in layer, 64->64 3x3 on 56x56, batch 32 (see --in, --out,
    --kernel, --size, --stride, --batch). With SOURCE (spec or model): every Conv2d (or those
    picked by --layers / --kernel-size), and the whole model with each variant substituted.
    """
    from convcost.report.compare import compare_renderables, render_compare

    fmt = output_format(o["fmt"], o["output"], REPORT_FORMATS)
    check_outputs(output=o["output"], plot=o["plot"])
    per_layer = not o["model_only"]
    points = sweep_points(o)
    if len(points) > 1:
        return run_sweep(o, fmt, "compare", points, compare_once,
                      lambda r, w: compare_renderables(r, per_layer=per_layer, width=w),
                      lambda r, f: render_compare(r, f, per_layer=per_layer))
    result = compare_once(o)
    report = result.report
    if o["plot"] is not None:
        from convcost.report.plot import plot_compare

        plot_compare(report, o["plot"])
        click.echo(f"wrote {o['plot']}", err=True)
    emit(fmt, o["output"], o["wide"],
         lambda w: compare_renderables(report, per_layer=per_layer, width=w),
         lambda f: render_compare(report, f, per_layer=per_layer))
    return run_status(result.run, o["output"])


@cli.command()
@click.argument("source")
@plan_options
@candidate_options
@_format_options
@timing_options
@source_options
@traceback_option
def plan(**o: Any) -> int:
    """Choose, per selected conv, the variant that meets the limits at the least latency (or
    params, MACs), exactly, and time the planned model against the original to prove it.
    `-o plan.yaml` writes the plan for `analyze --apply` / `compare --apply` (docs/plan.md)."""
    from convcost import isolation, jobs
    from convcost.report.plan import plan_renderables, render_plan
    from convcost.report.progress import progress_for

    single_point(o, "plan")
    plan_file, out = split_plan_output(o["output"])
    fmt = output_format(o["fmt"], out, REPORT_FORMATS)
    check_outputs(output=out, plan_file=plan_file, plot=o["plot"])
    req = plan_request(o)
    result = isolation.call(jobs.run_plan, source_request(o), req, plan_timing(o),
                            progress_for, isolate=jobs.needs_isolation(o["source"]),
                            label=o["source"], timeout_s=o["timeout"])
    if plan_file is not None:
        write_plan_file(plan_file, result.report)
    if o["plot"] is not None:
        from convcost.report.plot import plot_plan

        click.echo(f"wrote {plot_plan(result.report, o['plot'])}", err=True)
    emit(fmt, out, o["wide"], lambda w: plan_renderables(result.report, w),
         lambda f: render_plan(result.report, f))
    status = run_status(result.run, out)
    return 1 if result.report.broken_latency() else status


@cli.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--quick", is_flag=True, help="Small sizes (a rough figure in a second or two).")
@click.option("--threads", type=click.IntRange(1, 1024), help="CPU threads (default: torch's).")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@traceback_option
def calibrate(device: str, quick: bool, threads: int | None, fmt: str) -> None:
    """Measure the device's peak bandwidth (large copy) and GEMM TFLOP/s per dtype, and cache them
    per device fingerprint so reports can show roofline bounds."""
    from convcost.jobs import run_calibrate
    from convcost.report.calibration import render_calibration

    cal = run_calibrate(device, quick, threads,
                        lambda n: click.echo(f"notice: {n}", err=True))
    click.echo(render_calibration(cal.peaks, cal.path, fmt), nl=False)


@cli.command()
@click.option("--sample", type=FiniteFloat(0.05, 60), default=0.5, show_default=True,
              help="Seconds over which the load of other tasks is read.")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@traceback_option
def doctor(sample: float, fmt: str) -> None:
    """A quick look at the machine before timing: load and steal, frequency governor, turbo,
    SMT, isolated CPUs, threads, other GPU processes; with what to change (see docs/timing.md)."""
    from convcost.jobs import run_doctor
    from convcost.report.doctor import render_doctor

    click.echo(render_doctor(run_doctor(sample), fmt), nl=False)


@cli.command()
@click.argument("budget", type=click.Path(path_type=Path))
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json", "markdown"]),
              default="table", show_default=True,
              help="Output format (JSON always includes the limits); with -o, the file's "
                   "extension (.json, .md, .txt) decides when --format is not given.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the report to FILE (whether the checks pass or not); the verdict "
                   "table is printed either way.")
@wide_option
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write JUnit XML to FILE.")
@click.option("--summary", type=click.Path(dir_okay=False, path_type=Path),
              help="Append a Markdown summary to FILE (default: $GITHUB_STEP_SUMMARY when set).")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path),
              help="Baseline report for regression limits (overrides the budget's 'baseline').")
@click.option("--update-baseline", is_flag=True,
              help="Write the current figures as the new baseline.")
@click.option("--no-time", is_flag=True, help="Skip latency limits (with a notice).")
@click.option("--max-time", type=FiniteFloat(0.001, 3600), default=1.0, show_default=True,
              help="Time cap per latency measurement, in seconds.")
@timeout_option
@memory_option
@traceback_option
def check(**o: Any) -> int:
    """Check models against the size and latency budgets in BUDGET (a YAML file).

    Exit 0 when every limit holds (warnings allowed), 1 when one is exceeded, 2 for a bad
    budget file, 3 when a model cannot be loaded (the other checks still run, and the report,
    JUnit and summary are always written).
    """
    from convcost.check.budget_file import load_budget
    from convcost.check.run import run_budget

    env_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    o["summary"] = o["summary"] or (Path(env_summary) if env_summary else None)
    o["out_fmt"] = output_format(o["fmt"], o["output"], ("table", "json", "markdown"))
    check_outputs(output=o["output"], junit_report=o["junit"], summary=o["summary"])
    budget = load_budget(o["budget"])
    report = run_budget(budget, measure_latency=not o["no_time"],
                        update_baseline=o["update_baseline"], baseline_path=o["baseline"],
                        max_time_s=o["max_time"], memory_check=not o["ignore_memory"],
                        timeout_s=o["timeout"])
    _emit_check(budget, report, o)
    if o["update_baseline"]:
        _update_baseline(budget, report, o["baseline"])
    for _, _, why in report.errors:
        err(why)
    for r in report.failed:
        click.echo(r.message, err=True)
    if report.interrupted:
        err(f"{'terminated' if report.terminated else 'interrupted'}: "
            f"{len(report.not_checked)} check(s) not run ({', '.join(report.not_checked[:5])}); "
            "the finished ones are reported" + (" and written" if o["output"] or o["junit"]
                                                else ""))
    return report.exit_status


def _emit_check(budget: Any, report: Any, o: dict[str, Any]) -> None:
    """The verdict table (the gate's log, printed even when -o writes a file) or JSON on
    stdout; the report file, JUnit and the Markdown summary."""
    from convcost.check.budget_file import limits_document
    from convcost.files import append_text
    from convcost.report.check import budget_dict, budget_junit, budget_markdown, budget_renderables
    from convcost.report.common import json_text
    from convcost.report.layout import emit as draw
    from convcost.report.layout import plain_text

    doc = budget_dict(report, limits_document(budget))
    if o["fmt"] == "json" and o["output"] is None:
        click.echo(json_text(doc))
    else:
        console = stdout_console()
        draw(budget_renderables(report, width=table_width(o["wide"], console)), console)
    if o["output"] is not None:
        text = {"json": json_text(doc) + "\n", "markdown": budget_markdown(report)}.get(
            o["out_fmt"]) or plain_text(budget_renderables(report))
        write_file(o["output"], text)
    if o["junit"] is not None:
        write_file(o["junit"], budget_junit(report))
    if o["summary"] is not None:
        append_text(o["summary"], budget_markdown(report))


def _update_baseline(budget: Any, report: Any, named: Path | None) -> None:
    from convcost.check.baseline import baseline_document, baseline_path, write_baseline

    if report.errors or report.interrupted:
        click.echo("notice: the baseline was not updated: not every check was measured", err=True)
        return
    target = baseline_path(budget.path, named, budget.baseline)
    write_baseline(target, baseline_document(report))
    click.echo(f"wrote baseline {target}", err=True)


@cli.group()
def cache() -> None:
    """The latency table: measurements kept between runs (in the user cache directory).

    \b
    convcost cache list              what is stored
    convcost cache export t.csv      the lookup table as CSV (or .json)
    convcost cache clear             delete every stored measurement
    """


def _table_rows() -> tuple[Any, list[dict[str, Any]]]:
    """The latency table and its valid rows; every notice (unusable table, ignored rows)
    printed once to stderr."""
    from convcost.timing.table import LatencyTable

    t = LatencyTable.open()
    rows = t.kernels()
    for n in t.notices:
        click.echo(f"notice: {n}", err=True)
    return t, rows


@cache.command("list")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json", "csv"]),
              default="table", show_default=True)
@wide_option
@traceback_option
def cache_list(fmt: str, wide: bool) -> None:
    """Show the stored measurements, newest first."""
    from convcost.report.cache import cache_csv, cache_json, cache_renderables

    t, rows = _table_rows()
    emit(fmt, None, wide, lambda w: cache_renderables(rows, str(t.path), t.count()[1], width=w),
         lambda f: cache_json(rows, str(t.path), t.pairs()) if f == "json" else cache_csv(rows))


@cache.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-f", "--format", "fmt", type=click.Choice(["json", "csv"]),
              help="Format (default: from the extension, .json or .csv).")
@traceback_option
def cache_export(file: Path, fmt: str | None) -> None:
    """Write the stored measurements to FILE as JSON or CSV."""
    from convcost.report.cache import cache_csv, cache_json

    ext = file.suffix.lower().lstrip(".")
    if fmt and ext in ("json", "csv") and ext != fmt:
        raise InputError(f"--format {fmt} but {file} is a .{ext} file; drop --format or rename "
                         "the file")
    fmt = fmt or (ext if ext in ("json", "csv") else None)
    if fmt is None:
        raise InputError(f"{file}: cannot tell the format from the extension; use .json or .csv, "
                         "or --format json|csv")
    check_outputs(export=file)
    t, rows = _table_rows()
    write_file(file, cache_json(rows, str(t.path), t.pairs()) if fmt == "json" else
               cache_csv(rows),
               say=False)
    click.echo(f"wrote {len(rows)} measurement(s) to {file}", err=True)


@cache.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@traceback_option
def cache_import(file: Path) -> int:
    """Merge a latency table exported on another machine (`cache export FILE.json`): every
    row validated, fingerprints kept; a malformed row is one line and is not imported."""
    from convcost.jobs import run_cache_import

    got = run_cache_import(file)
    for line in got.refused:
        err(line)
    click.echo(f"imported {got.kernels} measurement(s) and {got.pairs} paired ratio(s) from "
               f"{file} into {got.table}" + (f"; {len(got.refused)} row(s) refused" if got.refused
                                             else ""))
    return 2 if got.refused else 0


@cache.command("clear")
@traceback_option
def cache_clear() -> None:
    """Delete every stored measurement and paired ratio."""
    from convcost.timing.table import LatencyTable

    t = LatencyTable.open()
    k, p = t.clear()
    click.echo(f"removed {k} measurement(s) and {p} paired ratio(s) from {t.path}")


@cache.command("path")
@traceback_option
def cache_path() -> None:
    """Print where the latency table lives."""
    from convcost.timing.table import default_path

    click.echo(str(default_path()))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``convcost``, ``python -m convcost``): see
    :func:`convcost.cli_output.run_process`."""
    run_process(cli, argv)
