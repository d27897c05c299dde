"""Command line: parse, call the core, render, map errors to exit codes. Computes nothing itself."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from convcost import __version__
from convcost.errors import ConvcostError, ExitStatus, InputError

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
            _err("interrupted")
            ctx.exit(int(ExitStatus.INTERRUPTED))
        except Exception as e:
            if _want_traceback(ctx):
                raise
            msg = str(e).strip().splitlines()
            _err(f"internal error: {type(e).__name__}: {msg[0] if msg else ''} "
                 "(a bug in convcost; rerun with --traceback and report it)")
            ctx.exit(int(ExitStatus.INTERNAL))


def _want_traceback(ctx: click.Context) -> bool:
    return bool(ctx.find_root().meta.get("convcost.traceback"))


def _err(msg: str) -> None:
    click.echo(f"convcost: error: {msg}", err=True)


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
        try:
            dims = tuple(int(x) for x in str(value).replace("x", ",").split(",") if x.strip())
        except ValueError:
            self.fail(f"{value!r} is not a shape; use comma-separated positive integers such as "
                      "1,3,224,224", param, ctx)
        if len(dims) < 2 or any(d < 1 for d in dims):
            self.fail(f"{value!r} is not a shape; use at least two positive integers, e.g. "
                      "1,3,224,224", param, ctx)
        if any(d > 1 << 20 for d in dims):
            self.fail(f"{value!r}: a dimension is larger than {1 << 20}", param, ctx)
        return dims


def _common(f: Callable) -> Callable:
    f = traceback_option(f)
    return f


def _write_file(path: Path, text: str) -> None:
    """Write where the user pointed; OS problems become one ``InputError`` line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot write: {e.strerror or e}") from e


def _write_or_print(text: str, output: Path | None, console: Console) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    _write_file(output, text)
    click.echo(f"wrote {output}", err=True)


def stdout_console() -> Console:
    """Rich console for standard output; wide when piped so tables are never truncated."""
    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=200)
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
@click.option("--export-spec", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the conv inventory as a spec of independent layers to FILE.")
@_common
def analyze(source: str, fmt: str, output: Path | None, batch: int | None,
            input_shape: tuple[int, ...] | None, depth: int | None,
            export_spec: Path | None) -> None:
    """Per-layer parameters, MACs and FLOPs of SOURCE (a YAML spec or a model)."""
    from convcost.analysis import analyze_model
    from convcost.load import load_source
    from convcost.report import analysis_renderables, render_analysis

    loaded = load_source(source, input_shape=input_shape, batch=batch)
    dtype = loaded.spec.dtype if loaded.spec and loaded.spec.dtype else "fp32"
    report = analyze_model(loaded.model, loaded.inputs, source=source, name=loaded.name,
                           dtype=dtype)
    console = stdout_console()
    if export_spec is not None:
        from convcost.export import export_spec_yaml

        text, notes = export_spec_yaml(report)
        _write_file(export_spec, text)
        for n in notes:
            click.echo(f"note: {n}", err=True)
        click.echo(f"wrote {export_spec}", err=True)
    if fmt == "table" and output is None:
        for r in analysis_renderables(report, depth=depth):
            console.print(r)
        return
    _write_or_print(render_analysis(report, fmt, depth=depth), output, console)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="convcost")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
