"""What the command line does around a command: exceptions and results become one stderr line
and an exit status (one mapper, :func:`exit_status_of`), reports reach standard output or the
file named (:func:`emit`), and the process ends quickly once everything is flushed
(:func:`run_process`). Rendering itself lives in :mod:`convcost.report`."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from convcost import startup
from convcost.errors import ConvcostError, ExitStatus, InputError, first_line

if TYPE_CHECKING:  # rich is loaded when a table is printed, never for -f json/csv
    from rich.console import Console

_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EIO, errno.EDQUOT}


def one_line(msg: str) -> str:
    """Escape control characters (newlines, CR, ...) so that an error is always one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)


def err(msg: str) -> None:
    click.echo(f"convcost: error: {one_line(msg)}", err=True)


def quiet_broken_pipe() -> None:
    """The reader went away (``| head -1``): stop quietly with the shell's code for SIGPIPE."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    os._exit(int(ExitStatus.BROKEN_PIPE))


# --------------------------------------------------------------------------- the exit mapper


def exit_status_of(e: BaseException) -> int:
    """The exit status for an exception a command (or click's parsing) raised, its one line
    printed: click's own usage errors, convcost's errors (each carries its status), Ctrl-C and
    SIGTERM, a reader gone, a full standard output, and anything else as an internal error."""
    from convcost.isolation import TERMINATED

    if isinstance(e, click.exceptions.Exit):
        return e.exit_code
    if isinstance(e, click.ClickException):
        e.show()
        return e.exit_code
    if isinstance(e, click.exceptions.Abort):
        err("aborted")
        return int(ExitStatus.INTERRUPTED)
    if isinstance(e, SystemExit):
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if isinstance(e, ConvcostError):
        err(str(e))
        return int(e.exit_status)
    if isinstance(e, KeyboardInterrupt):
        if TERMINATED["flag"]:
            err("terminated (SIGTERM) before any row was finished")
            return int(ExitStatus.TERMINATED)
        err("interrupted")
        return int(ExitStatus.INTERRUPTED)
    if isinstance(e, BrokenPipeError):
        quiet_broken_pipe()
    if isinstance(e, OSError) and e.errno in _OUTPUT_ERRNOS:
        err(f"cannot write the report to standard output: {e.strerror or e}")
        return int(ExitStatus.BAD_INPUT)
    err(f"internal error: {first_line(e)} (a bug in convcost; rerun with --traceback and "
        "report it)")
    return int(ExitStatus.INTERNAL)


class ConvcostGroup(click.Group):
    """Runs a command; what it returns (an exit status) or raises becomes the exit status in one
    place (:func:`exit_status_of`); no traceback unless ``--traceback``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            rv = super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (Exception, KeyboardInterrupt) as e:
            if _want_traceback(ctx) and not isinstance(e, BrokenPipeError):
                raise
            ctx.exit(exit_status_of(e))
        if isinstance(rv, int) and not isinstance(rv, bool) and rv:
            ctx.exit(rv)
        return rv


def _want_traceback(ctx: click.Context) -> bool:
    return bool(ctx.find_root().meta.get("convcost.traceback"))


def _set_traceback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().meta["convcost.traceback"] = True


def traceback_option(f: Callable) -> Callable:
    return click.option("--traceback", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_traceback,
                        help="Show the full Python traceback on errors (for debugging).")(f)


def run_status(run: Any, output: Path | None = None) -> int:
    """The exit status of a timed run, its one line printed: 130/143 interrupted, 4 when some
    measurements failed, did not fit in the time budget or got fewer than the sample minimum,
    else 0."""
    if run is None:
        return 0
    if run.interrupted:
        from convcost.isolation import TERMINATED

        how = "terminated (SIGTERM)" if TERMINATED["flag"] else "interrupted"
        where = "written to -o" if output is not None else "printed above"
        err(f"{how}: the finished rows are {where}; {len(run.missing)} measurement(s) were "
            "not taken (listed in the report)")
        return int(ExitStatus.TERMINATED if TERMINATED["flag"] else ExitStatus.INTERRUPTED)
    problems = []
    if run.failures:
        problems.append(f"{len(run.failures)} measurement(s) failed (see the rows marked "
                        "'failed')")
    if run.over_budget:
        problems.append(f"{len(run.over_budget)} measurement(s) did not fit in the time budget "
                        f"of {run.engine.get('time_budget_s'):g} s (marked 'not measured "
                        "(budget)'); raise --time-budget, or rerun: measured kernels are cached")
    if run.undersampled:
        problems.append(f"{len(run.undersampled)} measurement(s) got fewer than the "
                        f"{run.config.min_samples}-sample minimum (marked '!', not stored)")
    if problems:
        err("incomplete: " + "; ".join(problems))
        return int(ExitStatus.INCOMPLETE)
    return 0


# --------------------------------------------------------------------------- outputs

FORMAT_BY_EXT = {".json": "json", ".csv": "csv", ".md": "markdown", ".markdown": "markdown",
                 ".txt": "table"}


def output_format(fmt: str, output: Path | None, allowed: tuple[str, ...]) -> str:
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


def check_outputs(**paths: Path | None) -> None:
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


def write_file(path: Path, text: str, what: str = "output", say: bool = True) -> None:
    """Write where the user pointed, atomically, and (``say``) tell stderr."""
    from convcost.files import atomic_write_text

    atomic_write_text(path, text, what)
    if say:
        click.echo(f"wrote {path}", err=True)


def stdout_console() -> Console:
    """Rich console for standard output (off a terminal, reports are written as plain text by
    :func:`emit`). Markup is off: names are printed as they are ('[/]' is text)."""
    from rich.console import Console

    console = Console(soft_wrap=False, markup=False, emoji=False, highlight=False)
    console.on_broken_pipe = quiet_broken_pipe  # rich's own default exits 1 (= budget exceeded)
    return console


def table_width(wide: bool, console: Console) -> int | None:
    """The width a table is fitted to: the terminal's, or None (every column) with --wide or
    off a terminal."""
    return None if wide or not console.is_terminal else console.width


def split_plan_output(output: Path | None) -> tuple[Path | None, Path | None]:
    """plan's ``-o``: a .yaml/.yml path is the plan file (the report then goes to standard
    output); any other is the report."""
    if output is not None and output.suffix.lower() in (".yaml", ".yml"):
        return output, None
    return None, output


def write_plan_file(path: Path, report: Any) -> None:
    """The best plan of ``report`` as a plan file (see :mod:`convcost.plan.planfile`)."""
    from convcost.plan.planfile import plan_file_of, plan_yaml

    write_file(path, plan_yaml(plan_file_of(report)))
    err(f"wrote {path}")


def emit(fmt: str, output: Path | None, wide: bool,
         renderables: Callable[[int | None], list[Any]], text: Callable[[str], str]) -> None:
    """Every command's report: a table on a terminal fitted to its width (every column with
    --wide); everything else (a pipe, a file, another format) as text, the wide form for
    tables; with ``-o``, to the file."""
    if fmt == "table" and output is None:
        from convcost.report.layout import emit as draw

        console = stdout_console()
        draw(renderables(table_width(wide, console)), console)
        return
    body = text(fmt)  # JSON, CSV, Markdown and files: rich is never loaded
    if output is None:
        click.echo(body, nl=False)
    else:
        write_file(output, body)


# --------------------------------------------------------------------------- the process


def _safe_streams() -> None:
    """Standard streams that never fail on encoding: characters the terminal's encoding cannot
    show (PYTHONIOENCODING=ascii and a non-ASCII name) are written as backslash escapes."""
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            s.reconfigure(errors="backslashreplace")


def run_process(group: click.Group, argv: list[str] | None) -> None:
    """Run the command line ``argv`` as a convcost process.

    The garbage collector is off while the command imports torch and friends (millions of
    objects, no garbage), then frozen and back on (:mod:`convcost.startup`). Run as the process
    itself (``argv`` None), it ends with ``os._exit`` once every output is flushed, closed and
    renamed: Python's teardown of torch's objects costs ~0.6 s and has nothing to save."""
    from convcost import isolation

    startup.begin()
    _safe_streams()
    isolation.DEFAULT_MODE["mode"] = "fork"  # this process computes nothing before it forks
    try:
        rv = group.main(args=argv, prog_name="convcost", standalone_mode=False)
    except BaseException as e:  # click's parsing errors, Ctrl-C there, a reader gone
        code = exit_status_of(e)
    else:  # click returns the exit code (ctx.exit) or the command's value
        code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    code = _flush_or_fail(code)
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
            quiet_broken_pipe()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 1)


def _flush_or_fail(code: int) -> int:
    """Flush standard output now, where a failure can still be reported (not at interpreter
    exit, where Python prints 'Exception ignored' and exits 120): the exit status after it."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_broken_pipe()
    except OSError as e:
        err(f"cannot write the report to standard output: {e.strerror or e}")
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitStatus.BAD_INPUT)
    return code
