"""Tables that fit the terminal: ranked columns, footnotes, no truncated cells.

Every column has a priority. A table is first built with every column; while it is wider than
the terminal, the column with the lowest priority is dropped (a footer line names what was
dropped and how to keep it: ``--wide``). Cells never wrap or get cut: a name or a figure is
shown whole or its column is not shown. Long per-row notes become numbered footnotes below the
table (the same text gets the same number). Piped output is the wide form: every column, no
wrapping, no trailing spaces (see :func:`emit`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported when a table is drawn, never for JSON or CSV
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text as RichText


def rich_text(*args: Any, **kwargs: Any) -> RichText:
    """``rich.text.Text``, imported on first use: JSON and CSV reports never load rich."""
    from rich.text import Text

    return Text(*args, **kwargs)

ESSENTIAL = 100  # columns with this priority or more are never dropped


@dataclass(frozen=True)
class Col:
    """A column: its header, alignment, priority (higher stays longer) and footer."""

    name: str
    justify: str = "left"
    priority: int = 50
    footer: str = ""
    hide_if_empty: bool = False  # e.g. notes: no column when no row has one


@dataclass
class Notes:
    """Per-row notes collected as numbered footnotes."""

    texts: list[str] = field(default_factory=list)

    def ref(self, notes: Sequence[str]) -> str:
        """``[1,3]`` for these notes (numbered on first use), or ``""``."""
        nums = []
        for n in notes:
            if not n:
                continue
            if n not in self.texts:
                self.texts.append(n)
            nums.append(self.texts.index(n) + 1)
        return f"[{','.join(map(str, nums))}]" if nums else ""

    def lines(self) -> list[RichText]:
        return [rich_text(f"[{i}] {t}") for i, t in enumerate(self.texts, 1)]


def _table(cols: Sequence[Col], rows: Sequence[Sequence[Any]], sections: set[int], *,
           show_footer: bool) -> Table:
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, show_footer=show_footer)
    for c in cols:
        t.add_column(c.name, justify=c.justify, footer=c.footer, no_wrap=True)  # type: ignore[arg-type]
    for i, r in enumerate(rows):
        if i in sections:
            t.add_section()
        t.add_row(*r)
    return t


def _width(t: Table) -> int:
    from rich.console import Console
    from rich.measure import Measurement

    c = Console(file=io.StringIO(), width=100_000, markup=False, emoji=False, highlight=False)
    return Measurement.get(c, c.options, t).maximum


def fit_table(cols: Sequence[Col], rows: Sequence[Sequence[Any]], *, width: int | None,
              title: str = "", show_footer: bool = False,
              sections: Iterable[int] = ()) -> tuple[RenderableType, list[str]]:
    """The title line and the table with the columns that fit in ``width`` (None: all), and
    the dropped names.

    ``sections``: row indexes before which a section line is drawn. The title, and the caller's
    captions, are text lines: they wrap at the terminal, not at the table."""
    sec = set(sections)
    keep = [i for i, c in enumerate(cols)
            if not c.hide_if_empty or any(str(r[i]) for r in rows)]
    dropped: list[str] = []
    if width is None:  # every column: drawn as text directly, rich's table only on a terminal
        return PlainTable([cols[i] for i in keep], [[r[i] for i in keep] for r in rows], sec,
                          title, show_footer), dropped
    while True:
        t = _table([cols[i] for i in keep], [[r[i] for i in keep] for r in rows], sec,
                   show_footer=show_footer)
        if width is None or _width(t) <= width:
            return _titled(title, t), dropped
        candidates = [i for i in keep if cols[i].priority < ESSENTIAL]
        if not candidates:
            return _titled(title, t), dropped
        worst = min(candidates, key=lambda i: (cols[i].priority, -i))
        keep.remove(worst)
        dropped.append(cols[worst].name)


class PlainTable:
    """A table with every column, as :func:`fit_table` returns it for files and pipes: its text
    is produced directly (the same characters as rich's ``SIMPLE_HEAD`` table at its natural
    width, ~50x faster on a 6,000-row report); on a terminal (``--wide``) it renders as the
    rich table."""

    def __init__(self, cols: Sequence[Col], rows: Sequence[Sequence[Any]], sections: set[int],
                 title: str, show_footer: bool) -> None:
        self.cols, self.rows, self.sections = list(cols), rows, sections
        self.title, self.show_footer = title, show_footer

    def lines(self) -> list[str]:
        """The table's lines, trailing spaces removed (as :func:`plain_text` writes them)."""
        from rich.cells import cell_len

        def text(v: Any) -> str:
            return v.plain if hasattr(v, "plain") else str(v)

        head = [c.name for c in self.cols]
        body = [[text(v) for v in r] for r in self.rows]
        foot = [c.footer for c in self.cols] if self.show_footer else None
        widths = [cell_len(h) for h in head]
        for r in [*body, *([foot] if foot else [])]:
            for i, v in enumerate(r):
                n = cell_len(v)
                if n > widths[i]:
                    widths[i] = n
        right = [c.justify == "right" for c in self.cols]

        def line(cells: Sequence[str]) -> str:
            parts = []
            for v, w, r in zip(cells, widths, right, strict=True):
                pad = " " * (w - cell_len(v))
                parts.append(f" {pad}{v} " if r else f" {v}{pad} ")
            return (" " + " ".join(parts)).rstrip()

        total = 2 + sum(w + 2 for w in widths) + max(0, len(widths) - 1)
        out = [self.title] if self.title else []
        out += ["", line(head), " " + "─" * (total - 2)]
        for i, r in enumerate(body):
            if i in self.sections and i:
                out.append("")
            out.append(line(r))
        if foot is not None:
            out += ["", line(foot)]
        out.append("")
        return out

    def __rich_console__(self, console: Any, options: Any) -> Any:
        t = _table(self.cols, self.rows, self.sections, show_footer=self.show_footer)
        yield _titled(self.title, t)


def _titled(title: str, t: Table) -> RenderableType:
    from rich.console import Group

    return Group(rich_text(title, style="bold"), t) if title else t


def dropped_line(dropped: Sequence[str]) -> list[RichText]:
    if not dropped:
        return []
    return [rich_text(f"columns not shown at this width: {', '.join(dropped)} (--wide shows them, as "
                 "do -f markdown, json and csv)", style="dim")]


def emit(renderables: Iterable[RenderableType], console: Console) -> None:
    """Print to a terminal with rich; elsewhere (a pipe, a file) as plain text: no wrapping,
    no trailing spaces."""
    items = list(renderables)
    if console.is_terminal:
        for r in items:
            console.print(r)
        return
    console.file.write(plain_text(items))


def plain_text(renderables: Iterable[RenderableType], width: int | None = None) -> str:
    """Plain text of rich renderables: tables at their natural width (or ``width``), text lines
    unwrapped, trailing spaces removed."""
    from rich.console import Console
    from rich.text import Text as RichText

    out = []
    for r in renderables:
        if isinstance(r, RichText):
            out.append(r.plain.rstrip())
            continue
        if isinstance(r, PlainTable) and width is None:
            out.extend(r.lines())
            continue
        buf = io.StringIO()
        c = Console(file=buf, width=width or 100_000, color_system=None, force_terminal=False,
                    markup=False, emoji=False, highlight=False, soft_wrap=False,
                    legacy_windows=False)
        c.print(r)
        out.extend(line.rstrip() for line in buf.getvalue().splitlines())
    return "\n".join(out) + "\n"
