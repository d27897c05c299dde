"""Command line: parse, call the core, render, map errors to exit codes. Computes nothing itself."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from convcost import __version__, startup
from convcost.errors import ConvcostError, ExitStatus, InputError

if TYPE_CHECKING:  # rich is loaded when a table is printed, never for -f json/csv
    from rich.console import Console

DEFAULT_BUDGET_S = 40.0  # the engine's default, repeated here so --help needs no torch import

# --------------------------------------------------------------------------- error mapping


class ConvcostGroup(click.Group):
    """Maps convcost's exceptions to one stderr line and an exit status (no traceback unless
    ``--traceback``); anything unexpected is an internal error (exit 70)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except ConvcostError as e:
            if _want_traceback(ctx):
                raise
            _err(str(e))
            ctx.exit(int(e.exit_status))
        except KeyboardInterrupt:
            if _want_traceback(ctx):
                raise
            from convcost.isolation import TERMINATED

            if TERMINATED["flag"]:
                _err("terminated (SIGTERM) before any row was finished")
                ctx.exit(int(ExitStatus.TERMINATED))
            _err("interrupted")
            ctx.exit(int(ExitStatus.INTERRUPTED))
        except BrokenPipeError:
            _quiet_broken_pipe()
        except OSError as e:
            if e.errno not in _OUTPUT_ERRNOS or _want_traceback(ctx):
                raise
            _err(f"cannot write the report to standard output: {e.strerror or e}")
            ctx.exit(int(ExitStatus.BAD_INPUT))
        except Exception as e:
            if _want_traceback(ctx):
                raise
            msg = str(e).strip().splitlines()
            _err(f"internal error: {type(e).__name__}: {msg[0] if msg else ''} "
                 "(a bug in convcost; rerun with --traceback and report it)")
            ctx.exit(int(ExitStatus.INTERNAL))


_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EIO, errno.EDQUOT}


def _quiet_broken_pipe() -> None:
    """The reader went away (``| head -1``): stop quietly with the shell's code for SIGPIPE."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    os._exit(int(ExitStatus.BROKEN_PIPE))


def _want_traceback(ctx: click.Context) -> bool:
    return bool(ctx.find_root().meta.get("convcost.traceback"))


def one_line(msg: str) -> str:
    """Escape control characters (newlines, CR, ...) so that an error is always one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)


def _err(msg: str) -> None:
    click.echo(f"convcost: error: {one_line(msg)}", err=True)


def _set_traceback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().meta["convcost.traceback"] = True


def traceback_option(f: Callable) -> Callable:
    return click.option("--traceback", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_traceback,
                        help="Show the full Python traceback on errors (for debugging).")(f)


# --------------------------------------------------------------------------- param types


class ShapeType(click.ParamType):
    """``1,3,224,224`` -> (1, 3, 224, 224): positive integers."""

    name = "B,C,H,W"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = re.split(r"[,x]", str(value).strip())
        try:
            dims = tuple(int(x) for x in parts)  # an empty part ("1,,3") is an error too
        except ValueError:
            self.fail(f"{value!r} is not a shape; use comma-separated positive integers such as "
                      "1,3,224,224", param, ctx)
        if len(dims) < 2 or any(d < 1 for d in dims):
            self.fail(f"{value!r} is not a shape; use at least two positive integers, e.g. "
                      "1,3,224,224", param, ctx)
        if any(d > 1 << 20 for d in dims):
            self.fail(f"{value!r}: a dimension is larger than {1 << 20}", param, ctx)
        return dims


class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and inf (``click.FloatRange`` lets nan through)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        import math

        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


class GroupsType(click.ParamType):
    """``--groups 1,2,4,8`` or ``all`` (every g dividing both C and N of each layer) -> tuple or None."""

    name = "G[,G...]|all"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...] | None:
        if value is None or isinstance(value, tuple):
            return value
        text = str(value).strip().lower()
        if text == "all":
            return None
        parts = [p.strip() for p in text.split(",")]
        if not parts or any(not p for p in parts):
            self.fail(f"{value!r}: use a comma list of positive integers such as 1,2,4,8, or "
                      "'all'", param, ctx)
        out: list[int] = []
        for p in parts:
            if not p.isdigit() or int(p) < 1:
                self.fail(f"{p!r} in {value!r} is not a positive integer; use e.g. 1,2,4,8 or "
                          "'all'", param, ctx)
            if int(p) > 1 << 20:
                self.fail(f"{p!r} is larger than {1 << 20}", param, ctx)
            if int(p) not in out:
                out.append(int(p))
        return tuple(out)


class VariantsType(click.ParamType):
    """``--variants grouped,depthwise,separable`` or ``all``."""

    name = "V[,V...]|all"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, ...]:
        from convcost.variants.catalogue import VARIANTS

        if isinstance(value, tuple):
            return value
        text = str(value).strip().lower()
        if text == "all":
            return VARIANTS
        out: list[str] = []
        for p in (x.strip() for x in text.split(",")):
            if p not in VARIANTS:
                self.fail(f"{p!r} is not a variant; choose from {', '.join(VARIANTS)} or 'all'",
                          param, ctx)
            if p not in out:
                out.append(p)
        return tuple(out)


class IntListType(click.ParamType):
    """``3`` or ``1,3`` -> (1, 3): positive integers."""

    name = "N[,N...]"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(int(x) for x in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r}: use positive integers separated by commas, e.g. 3 or 1,3",
                      param, ctx)
        if any(x < 1 for x in out):
            self.fail(f"{value!r}: sizes must be positive", param, ctx)
        return out


def _common(f: Callable) -> Callable:
    f = traceback_option(f)
    return f


def model_arg_option(f: Callable) -> Callable:
    return click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                        help="Keyword argument for the model's builder (torchvision:, timm:, a "
                             "class or factory), repeatable; values are YAML scalars, e.g. "
                             "--model-arg aux_logits=false --model-arg image_size=384.")(f)


def timeout_option(f: Callable) -> Callable:
    return click.option("--timeout", type=FiniteFloat(1, 86400), default=600.0,
                        show_default=True,
                        help="Seconds allowed for loading and counting a model (its code runs in "
                             "a separate process): a model that hangs ends with one line, "
                             "exit 3.")(f)


def count_on_option(f: Callable) -> Callable:
    return click.option("--count-on", "count_on", type=click.Choice(["auto", "meta", "real"]),
                        default="auto", show_default=True,
                        help="Count on meta tensors (nothing computed: any batch or resolution), "
                             "on real tensors (fvcore's JIT trace), or auto: meta for large "
                             "inputs.")(f)


def memory_option(f: Callable) -> Callable:
    return click.option("--ignore-memory-limit", "ignore_memory", is_flag=True,
                        help="Run even when the memory estimate exceeds what is available.")(f)


def timing_options(f: Callable) -> Callable:
    """Options shared by the commands that time kernels."""
    opts = [
        click.option("--time/--no-time", "do_time", default=True, show_default=True,
                     help="Time the real kernels (--no-time: counts only)."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA when available), cpu, cuda or cuda:N."),
        click.option("--dtype", type=click.Choice(["fp32", "tf32", "fp16", "bf16"]),
                     help="Kernel dtype; fp32 means TF32 off (default: the spec's, else fp32)."),
        click.option("--channels-last/--contiguous", "channels_last", default=None,
                     help="Memory format (default: channels-last for fp16/bf16 on CUDA)."),
        click.option("--threads", type=click.IntRange(1, 1024),
                     help="CPU threads for timing (default: torch's)."),
        click.option("--cold", is_flag=True,
                     help="Flush the caches (L2 on CUDA) before each timed call."),
        click.option("--max-time", type=FiniteFloat(0.001, 3600), default=1.0,
                     show_default=True, help="Time cap per measurement, in seconds."),
        click.option("--time-budget", type=FiniteFloat(0.1, 86400), default=DEFAULT_BUDGET_S,
                     show_default=True,
                     help="Seconds for all the timing of this command, split over the kernels "
                          "still to measure (cached ones cost nothing); what does not fit is "
                          "marked 'not measured (budget)' and the exit code is 4."),
        click.option("--fresh", is_flag=True,
                     help="Re-measure everything instead of reusing the latency table."),
        click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write a PNG plot (needs matplotlib: pip install 'convcost[plot]')."),
        click.option("--backend", "backend", default="eager", show_default=True,
                     metavar="NAME[,NAME...]",
                     help="Runtime(s) to time on, side by side: eager, inductor (torch.compile), "
                          "onnxruntime (convcost[onnx]), openvino (convcost[openvino], CPU). "
                          "Setup (compile, export) is reported apart from the timings."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _timing_request(do_time: bool, device: str, dtype: str | None, channels_last: bool | None,
                    threads: int | None, cold: bool, max_time: float, time_budget: float | None,
                    fresh: bool, backend: str = "eager") -> Any:
    """What to time with, validated now (a bad --device or --backend is an error even with
    --no-time; a missing extra is named before any work)."""
    from convcost.jobs import TimingRequest
    from convcost.timing.backends import DEFAULT, parse_backends
    from convcost.timing.device import resolve_device

    dev = resolve_device(device)
    backends = parse_backends(backend, dev if do_time else None)
    if not do_time:
        if backends != (DEFAULT,):
            raise InputError(f"--backend {','.join(backends)} times kernels: drop --no-time (or "
                             "--backend)")
        return None
    return TimingRequest(dev, dtype, channels_last, threads, cold, max_time, time_budget, fresh,
                         backends=backends)


def _check_outputs(**paths: Path | None) -> None:
    """Refuse bad destinations before any work (a missing folder, a plot that is not .png,
    matplotlib missing), not after minutes of timing."""
    from convcost.files import check_destination

    for what, path in paths.items():
        if path is None:
            continue
        if what == "plot":
            from convcost.report.plot import check_plot_path

            check_plot_path(path)
        else:
            check_destination(path, what.replace("_", " "))


def _exit_for(run: Any, output: Path | None = None) -> None:
    """Non-zero exit after the report is out: 130 interrupted, 4 some measurements failed or
    did not fit in the time budget."""
    if run is None:
        return
    if run.interrupted:
        from convcost.isolation import TERMINATED

        how = "terminated (SIGTERM)" if TERMINATED["flag"] else "interrupted"
        where = "written to -o" if output is not None else "printed above"
        _err(f"{how}: the finished rows are {where}; {len(run.missing)} measurement(s) were "
             "not taken (listed in the report)")
        sys.exit(int(ExitStatus.TERMINATED if TERMINATED["flag"] else ExitStatus.INTERRUPTED))
    problems = []
    if run.failures:
        problems.append(f"{len(run.failures)} measurement(s) failed (see the rows marked "
                        "'failed')")
    if run.over_budget:
        problems.append(f"{len(run.over_budget)} measurement(s) did not fit in the time budget "
                        f"of {run.engine.get('time_budget_s'):g} s (marked 'not measured "
                        "(budget)'); raise --time-budget, or rerun: measured kernels are cached")
    if getattr(run, "undersampled", None):
        problems.append(f"{len(run.undersampled)} measurement(s) got fewer than the "
                        f"{run.config.min_samples}-sample minimum (marked '!', not stored)")
    if problems:
        _err("incomplete: " + "; ".join(problems))
        sys.exit(int(ExitStatus.INCOMPLETE))


def _write_file(path: Path, text: str, what: str = "output") -> None:
    """Write where the user pointed, atomically; OS problems become one ``InputError`` line."""
    from convcost.files import atomic_write_text

    atomic_write_text(path, text, what)


def _write_or_print(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    _write_file(output, text)
    click.echo(f"wrote {output}", err=True)


FORMAT_BY_EXT = {".json": "json", ".csv": "csv", ".md": "markdown", ".markdown": "markdown",
                 ".txt": "table"}


def _output_format(fmt: str, output: Path | None, allowed: tuple[str, ...]) -> str:
    """The report format: --format when given, else the one ``-o``'s extension names (.json,
    .csv, .md, .txt), else the table. A contradiction is an error, before any work."""
    ctx = click.get_current_context()
    given = ctx.get_parameter_source("fmt") == click.core.ParameterSource.COMMANDLINE
    ext = output.suffix.lower() if output is not None else ""
    by_ext = FORMAT_BY_EXT.get(ext)
    if output is not None and ext and by_ext is None and not given:
        raise InputError(f"-o {output}: cannot tell the format from {ext!r}; name the file .json, "
                         ".csv, .md or .txt, or give --format")
    if given and by_ext is not None and by_ext != fmt:
        raise InputError(f"--format {fmt} but -o {output} is a {ext} file ({by_ext}); drop "
                         "--format or rename the file")
    chosen = fmt if given else (by_ext or fmt)
    if chosen not in allowed:
        raise InputError(f"-o {output}: this command writes {', '.join(allowed)}, not {chosen}")
    return chosen


def _emit_report(fmt: str, output: Path | None, wide: bool,
                 renderables: Callable[[int | None], list[Any]],
                 text: Callable[[str], str]) -> None:
    """A table on a terminal: fitted to its width (every column with --wide); everything else
    (a pipe, a file, another format) as text, the wide form for tables."""
    if fmt == "table" and output is None:
        from convcost.report.layout import emit

        console = stdout_console()
        emit(renderables(None if wide or not console.is_terminal else console.width), console)
        return
    _write_or_print(text(fmt), output)  # JSON, CSV, Markdown and files: rich is never loaded


def wide_option(f: Callable) -> Callable:
    return click.option("--wide", is_flag=True,
                        help="Keep every column on a terminal (narrow terminals drop the least "
                             "important ones and say which).")(f)


def stdout_console() -> Console:
    """Rich console for standard output (off a terminal, reports are written as plain text by
    :func:`_emit_report`). Markup is off: names are printed as they are ('[/]' is text)."""
    from rich.console import Console

    console = Console(soft_wrap=False, markup=False, emoji=False, highlight=False)
    console.on_broken_pipe = _quiet_broken_pipe  # rich's own default exits 1 (= budget exceeded)
    return console


# --------------------------------------------------------------------------- commands


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
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json", "csv", "markdown"]),
              default="table", show_default=True, help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to FILE instead of standard output.")
@click.option("--batch", type=click.IntRange(1, 1 << 20), help="Batch size (overrides the spec's).")
@click.option("--input-shape", type=ShapeType(), help="Input shape B,C,H,W for a model "
              "(default 1,3,224,224); a spec declares its own.")
@click.option("--depth", type=click.IntRange(0, 64), help="Collapse the table to the module "
              "hierarchy at this depth (0 = whole model).")
@click.option("--all", "show_all", is_flag=True,
              help="List every layer in the table (past 300 it is collapsed by default).")
@click.option("--export-spec", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the conv inventory as a spec of independent layers to FILE.")
@timing_options
@model_arg_option
@count_on_option
@timeout_option
@wide_option
@memory_option
@_common
def analyze(source: str, fmt: str, output: Path | None, batch: int | None,
            input_shape: tuple[int, ...] | None, depth: int | None, show_all: bool,
            export_spec: Path | None, do_time: bool, device: str, dtype: str | None,
            channels_last: bool | None, threads: int | None, cold: bool, max_time: float,
            time_budget: float, fresh: bool, plot: Path | None, backend: str,
            model_args: tuple[str, ...], count_on: str, timeout: float, wide: bool,
            ignore_memory: bool) -> None:
    """Per-layer parameters, MACs and FLOPs of SOURCE (a YAML spec or a model)."""
    from convcost import isolation, jobs
    from convcost.report.analyze import analysis_renderables, render_analysis
    from convcost.report.progress import progress_for
    from convcost.sources.load import parse_model_args

    fmt = _output_format(fmt, output, ("table", "json", "csv", "markdown"))
    _check_outputs(output=output, exported_spec=export_spec, plot=plot)
    src = jobs.SourceRequest(source, input_shape, batch, parse_model_args(model_args),
                             not ignore_memory, count_on)
    timing = _timing_request(do_time, device, dtype, channels_last, threads, cold, max_time,
                             time_budget, fresh, backend)
    result = isolation.call(jobs.run_analyze, src, timing, dtype, progress_for,
                            isolate=jobs.needs_isolation(source), label=source, timeout_s=timeout)
    report, run = result.report, result.run
    if plot is not None:
        from convcost.report.plot import plot_analysis

        plot_analysis(report, plot)
        click.echo(f"wrote {plot}", err=True)
    if export_spec is not None:
        from convcost.report.spec_export import export_spec_yaml

        text, notes = export_spec_yaml(report)
        _write_file(export_spec, text)
        for n in notes:
            click.echo(f"note: {n}", err=True)
        click.echo(f"wrote {export_spec}", err=True)
    _emit_report(fmt, output, wide,
                 lambda w: analysis_renderables(report, depth=depth, show_all=show_all, width=w),
                 lambda f: render_analysis(report, f, depth=depth, show_all=show_all))
    _exit_for(run, output)


@cli.command()
@click.argument("source", required=False)
@click.option("--groups", "groups", type=GroupsType(), default="1,2,4,8", show_default=True,
              help="Groups for the grouped variants: a comma list, or 'all' (every valid g).")
@click.option("--variants", "variant_names", type=VariantsType(),
              default="grouped,depthwise,separable", show_default=True,
              help="Variants: dense, grouped, depthwise, separable, pointwise-grouped, shuffle, "
                   "gdc, or 'all'.")
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
@click.option("--batch", type=click.IntRange(1, 1 << 16), help="Batch size (built-in layer: 32).")
@click.option("--input-shape", type=ShapeType(), help="Input shape B,C,H,W for a model.")
@click.option("--layers", "layer_globs", multiple=True, metavar="GLOB",
              help="Only convs whose qualified name matches GLOB (repeatable, or comma list).")
@click.option("--kernel-size", "kernel_sizes", type=IntListType(), default=None,
              help="Only convs with this square kernel size, e.g. 3 or 1,3.")
@click.option("--model-only", is_flag=True, help="With a SOURCE: print only the whole-model rows.")
@click.option("--no-model", is_flag=True, help="With a SOURCE: skip the whole-model rows.")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json", "csv", "markdown"]),
              default="table", show_default=True, help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to FILE instead of standard output.")
@timing_options
@model_arg_option
@count_on_option
@timeout_option
@wide_option
@memory_option
@_common
def compare(source: str | None, groups: tuple[int, ...] | None, variant_names: tuple[str, ...],
            cin: int, cout: int, kernel: int, size: int, stride: int, batch: int | None,
            input_shape: tuple[int, ...] | None, layer_globs: tuple[str, ...],
            kernel_sizes: tuple[int, ...] | None, model_only: bool, no_model: bool, fmt: str,
            output: Path | None, do_time: bool, device: str, dtype: str | None,
            channels_last: bool | None, threads: int | None, cold: bool, max_time: float,
            time_budget: float, fresh: bool, plot: Path | None, backend: str,
            model_args: tuple[str, ...], count_on: str, timeout: float, wide: bool,
            ignore_memory: bool) -> None:
    """Params and MACs of cheaper variants of each conv, counted next to the closed form.

    \b
    Without SOURCE: a built-in layer, 64->64 3x3 on 56x56, batch 32 (see --in, --out,
    --kernel, --size, --stride, --batch). With SOURCE (spec or model): every Conv2d (or those
    picked by --layers / --kernel-size), and the whole model with each variant substituted.
    """
    from convcost import isolation, jobs
    from convcost.report.compare import compare_renderables, render_compare
    from convcost.report.progress import progress_for
    from convcost.variants.catalogue import ConvLayer, expand_variants, valid_groups
    from convcost.variants.compare import DEFAULT_LAYER

    fmt = _output_format(fmt, output, ("table", "json", "csv", "markdown"))
    _check_outputs(output=output, plot=plot)
    if model_only and no_model:
        raise InputError("--model-only and --no-model exclude each other: the first prints only "
                         "the whole-model rows, the second skips them")
    ctx = click.get_current_context()
    layer_opts = [p for p in ("cin", "cout", "kernel", "size", "stride")
                  if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
    globs = tuple(g for item in layer_globs for g in item.split(",") if g)
    timing = _timing_request(do_time, device, dtype, channels_last, threads, cold, max_time,
                             time_budget, fresh, backend)
    if source is None:
        if globs or kernel_sizes or input_shape or model_only or no_model or model_args:
            raise InputError("--layers, --kernel-size, --input-shape, --model-only, --no-model "
                             "and --model-arg need a SOURCE")
        if kernel > size:
            raise InputError(f"--kernel {kernel} is larger than --size {size}")
        layer = ConvLayer(cin, cout, (kernel, kernel), (stride, stride), (kernel // 2,) * 2,
                          in_hw=(size, size), batch=batch or DEFAULT_LAYER.batch)
        from convcost.memory import guard, tensor_estimate

        guard(2 * tensor_estimate([layer.input_shape, layer.output_shape])
              + 4 * cin * cout * kernel * kernel,
              f"input {'x'.join(map(str, layer.input_shape))} and output "
              f"{'x'.join(map(str, layer.output_shape))}, twice", what="the built-in layer",
              enabled=not ignore_memory)
        gs = groups if groups is not None else tuple(valid_groups(layer))
        result = isolation.call(jobs.run_compare_layer, layer, expand_variants(variant_names, gs),
                                timing, progress_for, isolate=False, label="the built-in layer")
    else:
        if layer_opts:
            raise InputError(f"--{layer_opts[0].replace('cin', 'in').replace('cout', 'out')} "
                             "describes the built-in layer; with a SOURCE the layers come from it")
        from convcost.sources.load import parse_model_args

        src = jobs.SourceRequest(source, input_shape, batch, parse_model_args(model_args),
                                 not ignore_memory, count_on)
        what = jobs.CompareRequest(variant_names, groups, globs, kernel_sizes or (),
                                   not no_model)
        result = isolation.call(jobs.run_compare, src, what, timing, progress_for,
                                isolate=jobs.needs_isolation(source), label=source,
                                timeout_s=timeout)
    report, run = result.report, result.run
    if plot is not None:
        from convcost.report.plot import plot_compare

        plot_compare(report, plot)
        click.echo(f"wrote {plot}", err=True)
    _emit_report(fmt, output, wide,
                 lambda w: compare_renderables(report, per_layer=not model_only, width=w),
                 lambda f: render_compare(report, f, per_layer=not model_only))
    _exit_for(run, output)


@cli.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--quick", is_flag=True, help="Small sizes (a rough figure in a second or two).")
@click.option("--threads", type=click.IntRange(1, 1024), help="CPU threads (default: torch's).")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@_common
def calibrate(device: str, quick: bool, threads: int | None, fmt: str) -> None:
    """Measure the device's peak bandwidth (large copy) and GEMM TFLOP/s per dtype, and cache them
    per device fingerprint so reports can show roofline bounds."""
    import torch

    from convcost.paths import cache_dir
    from convcost.report.common import json_text
    from convcost.timing.device import resolve_device
    from convcost.timing.roofline import calibrate as run_calibrate
    from convcost.timing.roofline import save

    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    folder = cache_dir()
    try:  # say before the measurement, not after it, that the result cannot be kept
        folder.mkdir(parents=True, exist_ok=True)
        usable = os.access(folder, os.W_OK | os.X_OK)
    except OSError:
        usable = False
    if not usable:
        click.echo(f"notice: the cache folder {folder} cannot be used; the peaks will be "
                   "printed but not kept (set CONVCOST_CACHE_DIR to a writable folder)", err=True)
    peaks = run_calibrate(dev, copy_mib=64 if quick else None, gemm_n=512 if quick else None,
                          max_time_s=0.3 if quick else 1.0, quick=quick)
    path = None
    if usable:
        try:
            path, kept = save(peaks)
        except InputError as e:
            click.echo(f"notice: {e}; the peaks are printed but not kept", err=True)
        else:
            if kept is not None:
                click.echo(f"notice: the full calibration of {kept.get('measured_at', '?')} is "
                           "kept; these --quick figures are printed but not stored (run without "
                           "--quick to replace it)", err=True)
                path = None
    if fmt == "json":
        click.echo(json_text({**peaks.to_dict(), "cache": str(path) if path else None}))
        return
    click.echo(f"device:     {peaks.name} ({peaks.device})")
    click.echo(f"bandwidth:  {peaks.bandwidth_gbs:,.1f} GB/s (copy, read + write)")
    for dt, tf in peaks.tflops.items():
        click.echo(f"GEMM {dt:5s} {tf:,.2f} TFLOP/s")
    for k, v in peaks.details.items():
        if k.startswith("gemm_error"):
            click.echo(f"{k}: {v}")
    click.echo(f"cached in {path} (key: {peaks.key})" if path else "not cached")


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
@_common
def check(budget: Path, fmt: str, output: Path | None, junit: Path | None, summary: Path | None,
          wide: bool, baseline: Path | None, update_baseline: bool, no_time: bool,
          max_time: float, timeout: float, ignore_memory: bool) -> None:
    """Check models against the size and latency budgets in BUDGET (a YAML file).

    Exit 0 when every limit holds (warnings allowed), 1 when one is exceeded, 2 for a bad
    budget file, 3 when a model cannot be loaded (the other checks still run, and the report,
    JUnit and summary are always written).
    """
    import os

    from convcost.budget import baseline_document, limits_document, load_budget, run_budget
    from convcost.report.check import budget_dict, budget_junit, budget_markdown, budget_renderables
    from convcost.report.common import json_text

    summary_path = summary or (Path(os.environ["GITHUB_STEP_SUMMARY"])
                               if os.environ.get("GITHUB_STEP_SUMMARY") else None)
    out_fmt = _output_format(fmt, output, ("table", "json", "markdown"))
    _check_outputs(output=output, junit_report=junit, summary=summary_path)
    b = load_budget(budget)
    report = run_budget(b, measure_latency=not no_time, update_baseline=update_baseline,
                        baseline_path=baseline, max_time_s=max_time,
                        memory_check=not ignore_memory, timeout_s=timeout)
    from convcost.report.layout import emit, plain_text

    doc = budget_dict(report, limits_document(b))
    console = stdout_console()
    if fmt == "json" and output is None:
        click.echo(json_text(doc))
    else:  # the verdict table is the gate's log: printed even when -o writes a file
        width = None if wide or not console.is_terminal else console.width
        emit(budget_renderables(report, width=width), console)
    if output is not None:
        text = {"json": json_text(doc) + "\n",
                "markdown": budget_markdown(report)}.get(out_fmt) or plain_text(
                    budget_renderables(report))
        _write_file(output, text)
        click.echo(f"wrote {output}", err=True)
    if junit is not None:
        _write_file(junit, budget_junit(report))
        click.echo(f"wrote {junit}", err=True)
    if summary_path is not None:
        from convcost.files import append_text

        append_text(summary_path, budget_markdown(report))
    if update_baseline and (report.errors or report.interrupted):
        click.echo("notice: the baseline was not updated: not every check was measured", err=True)
    elif update_baseline:
        target = baseline or b.baseline or budget.parent / ".convcost" / "baseline.json"
        try:  # the baseline's folder is convcost's own (".convcost" by default): made if needed
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"{target.parent}: cannot create the baseline's folder: "
                             f"{e.strerror or e}") from e
        _write_file(target, json_text(baseline_document(report)) + "\n", "baseline")
        click.echo(f"wrote baseline {target}", err=True)
    for _, _, why in report.errors:
        _err(why)
    for r in report.failed:
        click.echo(r.message, err=True)
    if report.interrupted:
        _err(f"{'terminated' if report.terminated else 'interrupted'}: "
             f"{len(report.not_checked)} check(s) not run ({', '.join(report.not_checked[:5])}); "
             "the finished ones are reported" + (" and written" if output or junit else ""))
    code = report.exit_status
    if code:
        sys.exit(code)


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
@_common
def cache_list(fmt: str, wide: bool) -> None:
    """Show the stored measurements, newest first."""
    from convcost.report.cache import cache_csv, cache_json, cache_renderables

    t, rows = _table_rows()
    if fmt == "json":
        click.echo(cache_json(rows, str(t.path)), nl=False)
    elif fmt == "csv":
        click.echo(cache_csv(rows), nl=False)
    else:
        from convcost.report.layout import emit

        console = stdout_console()
        width = None if wide or not console.is_terminal else console.width
        emit(cache_renderables(rows, str(t.path), t.count()[1], width=width), console)


@cache.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-f", "--format", "fmt", type=click.Choice(["json", "csv"]),
              help="Format (default: from the extension, .json or .csv).")
@_common
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
    _check_outputs(export=file)
    t, rows = _table_rows()
    _write_file(file, cache_json(rows, str(t.path)) if fmt == "json" else cache_csv(rows))
    click.echo(f"wrote {len(rows)} measurement(s) to {file}", err=True)


@cache.command("clear")
@_common
def cache_clear() -> None:
    """Delete every stored measurement and paired ratio."""
    from convcost.timing.table import LatencyTable

    t = LatencyTable.open()
    k, p = t.clear()
    click.echo(f"removed {k} measurement(s) and {p} paired ratio(s) from {t.path}")


@cache.command("path")
@_common
def cache_path() -> None:
    """Print where the latency table lives."""
    from convcost.timing.table import default_path

    click.echo(str(default_path()))


def _safe_streams() -> None:
    """Standard streams that never fail on encoding: characters the terminal's encoding cannot
    show (PYTHONIOENCODING=ascii and a non-ASCII name) are written as backslash escapes."""
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            s.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``convcost``, ``python -m convcost``).

    The garbage collector is off while the command imports torch and friends (millions of
    objects, no garbage), then frozen and back on (:mod:`convcost.startup`). Run as the process itself
    (``argv`` None), it ends with ``os._exit`` once every output is flushed, closed and renamed:
    Python's teardown of torch's objects costs ~0.6 s per command and has nothing to save."""
    from convcost import isolation

    startup.begin()
    _safe_streams()
    isolation.DEFAULT_MODE["mode"] = "fork"  # this process computes nothing before it forks
    try:
        rv = cli.main(args=argv, prog_name="convcost", standalone_mode=False)
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        e.show()
        code = e.exit_code
    except click.exceptions.Abort:
        _err("aborted")
        code = int(ExitStatus.INTERRUPTED)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BrokenPipeError:
        _quiet_broken_pipe()
    else:  # click returns the exit code (ctx.exit) or the command's value (None)
        code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    _flush_or_fail()
    startup.settle()
    if argv is None and not os.environ.get("CONVCOST_SLOW_EXIT"):  # (benchmarks compare both)
        _fast_exit(code)
    sys.exit(code)


def _fast_exit(code: int) -> None:
    """End the process without interpreter teardown. Every report and file is written,
    closed and renamed by now (atomic writes complete before the command returns; the latency
    table commits each row); standard streams are flushed here, and a failure to flush is
    still reported."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            _quiet_broken_pipe()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 1)


def _flush_or_fail() -> None:
    """Flush standard output now, where a failure can still be reported (not at interpreter
    exit, where Python prints 'Exception ignored' and exits 120)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
    except OSError as e:
        _err(f"cannot write the report to standard output: {e.strerror or e}")
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(int(ExitStatus.BAD_INPUT))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
